"""Django REST framework integration: ``IdempotentMixin`` for APIView, GenericAPIView
and ViewSets.

The guard runs after DRF's ``initial()``: authentication, permissions and throttles
have passed, so the scope is the authenticated user and a 401/403/429 leaves no record.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django_idempotency import keys
from django_idempotency.conf import conf
from django_idempotency.guard import Guard, opt_out_of_atomic_requests, passthrough

if TYPE_CHECKING:
    from django.http import HttpResponseBase
    from rest_framework.request import Request

    _Base = Any
else:
    _Base = object


class IdempotentMixin(_Base):  # type: ignore[misc]
    """Guard unsafe actions of a DRF view with an idempotency key.

    ``idempotent_actions`` names the viewset actions (``{"create"}``) or, on plain
    APIViews, the lowercase methods (``{"post"}``) to guard; ``None`` guards every
    method in ``IDEMPOTENCY["METHODS"]``. Override the ``get_idempotency_*`` hooks for
    natural keys, tenant scopes or custom fingerprints.
    """

    idempotent_actions: Collection[str] | None = None
    idempotency_required: bool | None = None
    idempotency_atomic: bool = True
    idempotency_single_transaction: bool = False
    idempotency_ttl: timedelta | None = None
    idempotency_lease: timedelta | None = None

    @classmethod
    def as_view(cls, *args: Any, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        view = super().as_view(*args, **initkwargs)
        return opt_out_of_atomic_requests(view)  # type: ignore[no-any-return]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        name = request.method.lower() if request.method else ""
        handler = getattr(self, name, None)
        if handler is None:
            return
        if self.is_idempotent_request(request):
            setattr(self, name, self._guarded(handler))
        else:
            setattr(self, name, self._unguarded(handler))

    def is_idempotent_request(self, request: Request) -> bool:
        if request.method not in conf.METHODS:
            return False
        if self.idempotent_actions is None:
            return True
        action = getattr(self, "action", None)
        method = (request.method or "").lower()
        return action in self.idempotent_actions or method in self.idempotent_actions

    def get_idempotency_key(self, request: Request) -> str | None:
        """The raw key; the default reads the ``IDEMPOTENCY["HEADER"]`` header."""
        return request.META.get(conf.header_meta_key)

    def get_idempotency_scope(self, request: Request) -> str:
        return conf.SCOPE(request)

    def get_idempotency_fingerprint(self, request: Request) -> str:
        return keys.fingerprint(request)

    def get_idempotency_guard(self) -> Guard:
        return Guard(
            required=self.idempotency_required,
            atomic=self.idempotency_atomic,
            single_transaction=self.idempotency_single_transaction,
            key=self.get_idempotency_key,
            fingerprint=self.get_idempotency_fingerprint,
            scope=self.get_idempotency_scope,
            ttl=self.idempotency_ttl,
            lease=self.idempotency_lease,
        )

    def _unguarded(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        def unguarded(request: Request, *args: Any, **kwargs: Any) -> Any:
            return passthrough(request, lambda: handler(request, *args, **kwargs))

        return unguarded

    def _guarded(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        guard = self.get_idempotency_guard()

        def guarded(request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
            def view() -> HttpResponseBase:
                response = handler(request, *args, **kwargs)
                # Rendered here, inside the transaction, so the stored bytes are the
                # bytes sent; DRF's own finalize_response later is a no-op on it.
                finalized: HttpResponseBase = self.finalize_response(
                    request, response, *args, **kwargs
                )
                return finalized

            response: HttpResponseBase = guard.run(request, view)
            return response

        return guarded
