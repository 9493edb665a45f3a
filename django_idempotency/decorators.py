"""``@idempotent`` for Django function views, sync and async."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from asgiref.sync import async_to_sync, iscoroutinefunction

from django_idempotency.guard import Guard, GuardOptions, opt_out_of_atomic_requests, passthrough

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["idempotent"]

V = TypeVar("V", bound=Callable[..., Any])


@overload
def idempotent(view: V) -> V: ...


@overload
def idempotent(view: None = None, **options: Unpack[GuardOptions]) -> Callable[[V], V]: ...


def idempotent(view: V | None = None, **options: Unpack[GuardOptions]) -> V | Callable[[V], V]:
    """Run the view once per (scope, key); replay its response to every retry.

    Usable bare (``@idempotent``) or with arguments. The view is opted out of
    ``ATOMIC_REQUESTS`` on the records' database: the guard opens the transaction
    itself, and the claim must commit before the view starts. On a DRF view (above
    ``@api_view``) it guards from inside DRF, after authentication, like
    ``IdempotentMixin``; below ``@api_view`` it gets DRF's authenticated request anyway.
    The options are ``GuardOptions``, typed once for the decorator, the guard and the
    DRF mixin.
    """
    guard = Guard(**options)

    def decorate(view: V) -> V:
        if isinstance(getattr(view, "cls", None), type) and hasattr(view, "initkwargs"):
            from django_idempotency.drf import guard_drf_view  # only DRF views get here

            return guard_drf_view(view, guard)  # type: ignore[no-any-return]
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                if not guard.applies(request):
                    return await view(request, *args, **kwargs)
                run_view = async_to_sync(view)
                return await guard.arun(request, lambda: run_view(request, *args, **kwargs))

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(view)
            def sync_wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                if not guard.applies(request):
                    return passthrough(request, lambda: view(request, *args, **kwargs))
                if getattr(request, "_request", None) is not None:  # below @api_view
                    from django_idempotency.drf import finalized

                    return guard.run(
                        request, lambda: finalized(request, view(request, *args, **kwargs))
                    )
                return guard.run(request, lambda: view(request, *args, **kwargs))

            wrapper = sync_wrapper
        wrapper.idempotency_guard = guard
        return opt_out_of_atomic_requests(wrapper)  # type: ignore[no-any-return]

    if view is not None:
        return decorate(view)
    return decorate
