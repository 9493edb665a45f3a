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
replays; a lock timeout or an unreachable idempotency table retries the task
(``self.retry``, the task's ``max_retries``) instead of acknowledging it. The same key
with other arguments raises ``django_idempotency.once.KeyReused`` and fails the task.

Options other than ``key``, ``scope``, ``ttl``, ``lease`` and ``app`` go to Celery's
``task()`` decorator; ``acks_late`` and ``reject_on_worker_lost`` default to ``True``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from celery import shared_task  # type: ignore[import-untyped]

from django_idempotency.once import Busy, Once, Unavailable

F = TypeVar("F", bound=Callable[..., Any])


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
                raise task.retry(exc=exc, countdown=exc.retry_after) from exc
            except Unavailable as exc:
                raise task.retry(exc=exc, countdown=5) from exc
            return once.result

        run.__signature__ = _bound_signature(function, bind)  # type: ignore[attr-defined]
        register = app.task if app is not None else shared_task
        return register(bind=True, **options)(run)

    if function is not None:
        return decorate(function)
    return decorate


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
