"""Django REST framework integration: ``IdempotentMixin`` for APIView, GenericAPIView
and ViewSets.

The guard runs after DRF's ``initial()``: authentication, permissions and throttles
have passed, so the scope is the authenticated user and a 401/403/429 leaves no record.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import router, transaction
from django.http import Http404

from django_idempotency import conditional, keys
from django_idempotency.conf import conf
from django_idempotency.guard import Guard, GuardOptions, opt_out_of_atomic_requests, passthrough

if TYPE_CHECKING:
    from django.http import HttpResponseBase
    from rest_framework.request import Request

    _Base = Any
else:
    _Base = object

__all__ = ["ConditionalUpdateMixin", "IdempotentMixin"]


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
    #: The records' database (``using=``); ``None``: the router's, asked per request.
    idempotency_using: str | None = None
    #: Set by ``@idempotent`` above ``@api_view``: that decorator's guard, used as it is.
    _decorator_guard: Guard | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse contradictory attributes where the view is defined, not per request."""
        super().__init_subclass__(**kwargs)
        cls._class_guard()

    @classmethod
    def _class_guard(cls) -> Guard:
        """The guard the class attributes describe (the system checks read it)."""
        return cls._decorator_guard or Guard(**cls._class_options())

    @classmethod
    def _class_options(cls) -> GuardOptions:
        """Every ``idempotency_<option>`` attribute the mixin declares, as that option:
        a new guard option needs only its attribute here."""
        options = {
            name: getattr(cls, f"idempotency_{name}")
            for name in GuardOptions.__optional_keys__
            if f"idempotency_{name}" in vars(IdempotentMixin)
        }
        return cast(GuardOptions, options)

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
        if self._decorator_guard is not None:
            return self._decorator_guard.applies(request)
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

    def get_idempotency_using(self, request: Request) -> str | None:
        """The database of this request's record, beside its business writes (a tenant's
        shard); ``None`` asks the router, with the request, scope and key as hints."""
        return self.idempotency_using

    def get_idempotency_guard(self) -> Guard:
        if self._decorator_guard is not None:
            return self._decorator_guard
        options = self._class_options()
        options["key"] = self.get_idempotency_key
        options["fingerprint"] = self.get_idempotency_fingerprint
        options["scope"] = self.get_idempotency_scope
        options["using"] = self.get_idempotency_using
        return Guard(**options)

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


def finalized(request: Request, response: HttpResponseBase) -> HttpResponseBase:
    """The response as DRF will send it, for a guard below ``@api_view``.

    The guard stores the bytes before DRF's own ``finalize_response`` runs, so it must
    pick the renderer DRF negotiated first; DRF's later call changes nothing.
    """
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if view is None or getattr(response, "accepted_renderer", None) is not None:
        return response
    final: HttpResponseBase = view.finalize_response(request, response, *view.args, **view.kwargs)
    return final


def guard_drf_view(view: Any, guard: Guard) -> Any:
    """``@idempotent`` on a DRF view (above ``@api_view``): guard it from inside DRF.

    Outside, the guard would see the plain Django request before DRF authenticates it,
    so every token user would share the ``anonymous`` scope and get each other's
    replays. The view's class is remade with ``IdempotentMixin`` and this guard, so it
    runs after ``initial()`` like every mixin view, and carries the mixin's opt-out of
    ``ATOMIC_REQUESTS``.
    """
    original = view.cls
    guarded: Any = type(
        original.__name__,
        (IdempotentMixin, original),
        {
            "_decorator_guard": guard,
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            "__doc__": original.__doc__,
        },
    )
    actions = getattr(view, "actions", None)
    args = (actions,) if actions is not None else ()
    callback = guarded.as_view(*args, **view.initkwargs)
    callback.idempotency_guard = guard
    return callback


class ConditionalUpdateMixin(_Base):  # type: ignore[misc]
    """``If-Match`` / ``ETag`` for the detail routes of a GenericAPIView or ViewSet.

    Every 2xx answer about one object carries its ``ETag`` (from ``etag_version_field``,
    an integer field every write bumps, or from ``get_etag(instance)`` when that field
    is ``None``). Unsafe methods on a detail route (``conditional_methods``) need
    ``If-Match``: missing, ``428``; stale, ``412`` with the current ``ETag``; a match
    runs the action, and the version bump, the action's writes and its 2xx answer
    commit in one transaction (an error answer rolls all of them back). The check is a
    conditional ``UPDATE ... WHERE version IN (...)`` (or a ``select_for_update``), so
    of N writers holding the same ETag exactly one wins. See
    ``django_idempotency.conditional``.

    Combine with ``IdempotentMixin`` in either order: the Idempotency-Key replay is
    checked first, so a retried update replays its answer instead of failing the
    precondition it already changed. Custom detail actions get the check through
    ``get_object()``; keep the version field read-only in the serializer.
    """

    etag_version_field: str | None = "version"
    precondition_required: bool = True
    conditional_methods: Collection[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def get_etag(self, instance: Any) -> str:
        """The opaque ETag value (quoted on the wire); override for computed ETags."""
        if self.etag_version_field is None:
            raise ImproperlyConfigured(
                f"{type(self).__name__} sets etag_version_field = None: override get_etag()."
            )
        return str(getattr(instance, self.etag_version_field))

    def is_conditional_request(self, request: Request) -> bool:
        """Unsafe methods on a detail route (the URL names one object)."""
        lookup = getattr(self, "lookup_url_kwarg", None) or getattr(self, "lookup_field", "pk")
        return (request.method or "").upper() in {
            method.upper() for method in self.conditional_methods
        } and lookup in (getattr(self, "kwargs", None) or {})

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._if_match: conditional.IfMatch | None = None
        self._etag_instance: Any = None
        conditional_request = self.is_conditional_request(request)
        if conditional_request:
            # Wrapped before super().initial(), so IdempotentMixin (which wraps in its
            # initial()) always ends up outside: replay check, then this transaction.
            name = (request.method or "").lower()
            handler = getattr(self, name, None)
            if handler is not None:
                setattr(self, name, self._in_transaction(handler))
        super().initial(request, *args, **kwargs)
        if conditional_request:
            self._if_match = conditional.precondition(
                request.headers.get("If-Match"),
                required=self.precondition_required,
                etag=lambda: None,
            )

    def get_object(self) -> Any:
        instance = super().get_object()
        if_match, self._if_match = getattr(self, "_if_match", None), None
        if if_match is not None:
            model = type(instance)
            outcome = conditional.check_and_bump(
                model._default_manager.all(),
                {"pk": instance.pk},
                if_match,
                version_field=self.etag_version_field,
                etag=self.get_etag if self.etag_version_field is None else None,
            )
            if isinstance(outcome, conditional.Missing):
                raise Http404
            if self.etag_version_field is not None:
                setattr(instance, self.etag_version_field, outcome.version)
        self._etag_instance = instance
        return instance

    def perform_update(self, serializer: Any) -> None:
        if self.etag_version_field is not None:
            serializer.validated_data.pop(self.etag_version_field, None)
        super().perform_update(serializer)

    def handle_exception(self, exc: Exception) -> HttpResponseBase:
        if isinstance(exc, conditional.PreconditionError):
            return exc.response()
        response: HttpResponseBase = super().handle_exception(exc)
        return response

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)
        instance = getattr(self, "_etag_instance", None)
        if (
            instance is not None
            and 200 <= response.status_code < 300
            and request.method != "DELETE"
            and not response.has_header("ETag")
        ):
            response["ETag"] = conditional.quote_etag(self.get_etag(instance))
        return response

    def _in_transaction(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        def conditional_handler(request: Request, *args: Any, **kwargs: Any) -> Any:
            database = router.db_for_write(self.get_queryset().model)
            with transaction.atomic(using=database):
                response = handler(request, *args, **kwargs)
                if conditional.failed(response):
                    transaction.set_rollback(True, using=database)
            return response

        return conditional_handler
