"""Celery tasks whose writes happen once per message, even when the message comes back.

``acks_late`` plus ``task_reject_on_worker_lost`` make Celery redeliver a message
whose worker died, so no message is lost, but a worker that dies *after* its commit
and before its acknowledgement runs the task twice. ``idempotent_task`` wraps the
task body in ``django_idempotency.once.once``: the "processed" record and the result
commit in the task's transaction, and a redelivered message returns the stored
result without running the body::

    from django_idempotency.celery import idempotent_task

    @idempotent_task                       # keyed on the task id (the message id)
    def send_invoice(invoice_id: int) -> dict:
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        invoice.mark_sent()
        return {"invoice": invoice.pk}

    @idempotent_task(key=lambda order_id, amount: f"refund:{order_id}", max_retries=10)
    def refund(order_id: int, amount: int) -> dict: ...

The task id stays the same across redeliveries and ``self.retry()``; key on an intent
instead (``key=``) when the same work may be *published* twice under two ids (a
producer retrying ``.delay()``). The scope defaults to ``celery:<task name>``. Calls
that bypass the broker (``send_invoice(1)``) have no message to deduplicate and run
the body directly, unless ``key=`` gives them an intent.

A duplicate delivered while the first still runs waits for it on the record's unique
index (bounded by ``IDEMPOTENCY["WAIT"]``, or ``LEASE`` when that is 0) and then
replays. When that wait times out, the duplicate is re-sent to wait again, for as long
as the running attempt's lease may last (plus 30 seconds of grace), and then returns the stored
result: these waits do not count against ``max_retries``, which stays the budget for
failures. Past the lease and the grace, a duplicate still refused retries on that
budget; a dead lease is taken over and the body runs again (crash recovery). An
unreachable idempotency table retries the task (``self.retry``, the task's
``max_retries``) instead of acknowledging it. The same key with other arguments raises
``django_idempotency.once.KeyReused`` and fails the task, and a key the record cannot
hold raises ``keys.InvalidKey`` (a ``ValueError``): neither is retried, not even by
``autoretry_for``.

Options other than ``key``, ``scope``, ``ttl``, ``lease`` and ``app`` go to Celery's
``task()`` decorator; ``acks_late`` and ``reject_on_worker_lost`` default to ``True``.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from celery import shared_task  # type: ignore[import-untyped]
from celery.exceptions import Reject, Retry  # type: ignore[import-untyped]

from django_idempotency.conf import conf
from django_idempotency.keys import InvalidKey
from django_idempotency.once import Busy, KeyExpired, KeyReused, Once, Unavailable

__all__ = ["idempotent_task"]

F = TypeVar("F", bound=Callable[..., Any])
_WAIT_HEADER = "idempotency_wait_until"
_MAX_COUNTDOWN = 10.0
_GRACE = timedelta(seconds=30)
_UNAVAILABLE_COUNTDOWN = 5


def idempotent_task(
    function: Callable[..., Any] | None = None,
    *,
    key: Callable[..., object] | None = None,
    scope: str | None = None,
    ttl: timedelta | None = None,
    lease: timedelta | None = None,
    app: Any = None,
    **options: Any,
) -> Any:
    """Register ``function`` as a Celery task that runs once per message (or per ``key``).

    Usable bare (``@idempotent_task``) or with arguments; ``app`` registers the task
    on that Celery app instead of as a shared task.
    """
    options.setdefault("acks_late", True)
    options.setdefault("reject_on_worker_lost", True)
    options["dont_autoretry_for"] = (
        *options.get("dont_autoretry_for", ()),
        InvalidKey,
        KeyReused,
        KeyExpired,
    )
    bind = bool(options.pop("bind", False))

    def decorate(function: Callable[..., Any]) -> Any:
        @functools.wraps(function)
        def run(task: Any, *args: Any, **kwargs: Any) -> Any:
            call = functools.partial(function, task) if bind else function
            task_key = key(*args, **kwargs) if key is not None else task.request.id
            if task_key is None:
                return call(*args, **kwargs)
            try:
                with Once(
                    task_key,
                    scope=scope or f"celery:{task.name}",
                    payload=_arguments(function, bind, args, kwargs),
                    ttl=ttl,
                    lease=lease,
                ) as once:
                    if once.first:
                        once.result = call(*args, **kwargs)
            except Busy as exc:
                raise _retry_busy(task, exc, lease or conf.LEASE) from exc
            except Unavailable as exc:
                raise task.retry(exc=exc, countdown=_UNAVAILABLE_COUNTDOWN) from exc
            return once.result

        run.__signature__ = _bound_signature(function, bind)  # type: ignore[attr-defined]
        register = app.task if app is not None else shared_task
        return register(bind=True, **options)(run)

    if function is not None:
        return decorate(function)
    return decorate


def _retry_busy(task: Any, busy: Busy, lease: timedelta) -> Exception:
    """Re-send a duplicate to wait for the running attempt, or retry it on the budget.

    A wait is re-sent like ``task.retry`` but keeps ``request.retries``, so it spends
    none of ``max_retries`` (nor the share of the task's own ``self.retry`` calls).
    Eager calls (``apply``, ``task_always_eager``) retry at once, without a countdown,
    so waiting means nothing there: every retry counts, as it always did.
    """
    request = task.request
    headers = dict(request.headers or {})
    earlier = headers.get(_WAIT_HEADER, getattr(request, _WAIT_HEADER, None))
    waiting = _plan_wait(busy, earlier, lease, now=time.time())
    if request.is_eager or waiting is None:
        retried: Exception = task.retry(exc=busy, countdown=_wait_countdown(busy, request.retries))
        return retried
    countdown, headers[_WAIT_HEADER] = waiting
    again = task.signature_from_request(
        request, countdown=countdown, retries=request.retries, headers=headers
    )
    try:
        again.apply_async()
    except Exception as error:  # as task.retry does when it cannot re-send
        raise Reject(error, requeue=False) from error
    return Retry(exc=busy, when=countdown, sig=again)  # type: ignore[no-any-return]


def _plan_wait(
    busy: Busy, earlier: object, lease: timedelta, *, now: float
) -> tuple[float, dict[str, float]] | None:
    """The countdown and wait state of one more wait, or ``None`` once waiting is over.

    ``earlier`` is the state the previous wait sent along. The running attempt's lease
    ends when its committed record says (``in_progress``: ``retry_after``); an attempt
    still inside its transaction is invisible, but it claimed before this duplicate was
    first refused, so its lease ends at most one ``lease`` after that. Waiting is over
    ``_GRACE`` after the lease's end.
    """
    state = earlier if isinstance(earlier, dict) else {}
    waits = int(state.get("waits", 0))
    if busy.reason == "in_progress":
        until = now + busy.retry_after
    else:
        until = float(state.get("until", now + lease.total_seconds()))
    if now > until + _GRACE.total_seconds():
        return None
    return _wait_countdown(busy, waits), {"until": until, "waits": waits + 1}


def _wait_countdown(busy: Busy, attempt: int) -> float:
    """``retry_after``, at least a doubling back-off (1, 2, 4 s...), at most ``_MAX_COUNTDOWN``.

    The cap bounds how late a duplicate learns that the original finished; the next
    claim itself blocks until the original's transaction ends, so this is no busy poll.
    """
    return float(min(max(busy.retry_after, 2 ** min(attempt, 8)), _MAX_COUNTDOWN))


def _arguments(
    function: Callable[..., Any], bind: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The call's arguments by name, so ``f(7, 100)`` and ``f(invoice=7, amount=100)`` match."""
    try:
        bound = inspect.signature(function).bind(*((None,) if bind else ()), *args, **kwargs)
    except TypeError:
        return {"args": list(args), "kwargs": kwargs}
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if bind:
        arguments.pop(next(iter(arguments)))
    return arguments


def _bound_signature(function: Callable[..., Any], bind: bool) -> inspect.Signature:
    """The signature Celery checks ``delay()`` arguments against: ``(self, *the task's)``."""
    signature = inspect.signature(function)
    if bind:
        return signature
    task = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return signature.replace(parameters=[task, *signature.parameters.values()])
