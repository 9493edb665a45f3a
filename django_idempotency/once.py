"""Run a message handler's side effect once per message: the inbox pattern.

Queues deliver at least once: a worker that crashes after its commit but before its
acknowledgement gets the same message again. ``once`` claims the message's key in
the **same transaction** as the handler's writes and stores the handler's result
there too. The record and the writes commit together or not at all, so:

- a redelivered message finds the record and gets the stored result; nothing runs;
- a worker killed mid-handler leaves nothing behind (the database rolls back), so
  the redelivery simply runs again;
- a duplicate delivered *concurrently* waits on the record's unique index until the
  first transaction ends, then replays (or runs, if the first one rolled back).

As a context manager (the body always runs; ``run.first`` says whether to work)::

    from django_idempotency.once import once

    def handle(message):
        with once(f"invoice-paid:{message.id}", scope="billing") as run:
            if run.first:
                invoice = Invoice.objects.select_for_update().get(pk=message.invoice_id)
                invoice.mark_paid()
                run.result = {"invoice": invoice.pk, "status": invoice.status}
        return run.result          # the same answer on every delivery

As a decorator (the function runs only for the first delivery; a redelivery returns
the stored result without calling it)::

    @once(key=lambda message: message["id"])
    def handle(message: dict) -> dict:
        ...
        return {"invoice": invoice.pk}

From any consumer (Kafka, SQS, Pub/Sub, RabbitMQ, cron): key on the broker's message
id when producers never resend the same intent under a new id, or on an intent id in
the payload (``order_id + event type``) when they might; use one ``scope`` per
consumer, so two consumers of one topic both process each message; acknowledge the
message (commit the Kafka offset, delete the SQS message) only **after** the ``with``
block, i.e. after the commit. A crash between commit and acknowledgement is exactly
the case the record exists for: the redelivery replays. Keep ``ttl`` longer than the
longest redelivery delay (SQS's retention, a Kafka consumer's replay window). Work
outside the database (an HTTP call, an e-mail) is *not* made once by this: it may
repeat after a crash; send it a key derived from yours (``f"{key}:email"``) so the
downstream system deduplicates it, or move it to an outbox row written in the block.

``KeyReused`` means the key came back with another ``payload`` (a bug upstream; do
not retry). ``Busy`` and ``Unavailable`` are transient: retry the message later
(``Busy.retry_after`` seconds), never acknowledge it. A key the record cannot hold as
it is (empty, too long, control characters, white space at either end) raises
``keys.InvalidKey``, a ``ValueError``, before anything touches the database: it is
not transient either, so dead-letter the message.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from django_idempotency.conf import conf
from django_idempotency.keys import InvalidKey, digest, fingerprints, fit_key, fit_scope

if TYPE_CHECKING:
    from django_idempotency.engine import Attempt
    from django_idempotency.operation import NotRun

__all__ = ["Busy", "KeyExpired", "KeyReused", "OnceError", "Run", "Unavailable", "once"]

F = TypeVar("F", bound=Callable[..., Any])
_NO_PAYLOAD = object()


class OnceError(Exception):
    """Base class of the errors ``once`` raises instead of running the block."""


class KeyReused(OnceError):
    """The key was used before with a different payload: a bug upstream, not a retry."""


class KeyExpired(OnceError):
    """The message was processed long ago: its result is no longer kept (``TTL``), its
    key still is (``TOMBSTONE_TTL``). Nothing ran: acknowledge it."""


class Busy(OnceError):
    """Another delivery of the same message holds the key, or a lock wait timed out.

    Nothing was committed: retry the message after ``retry_after`` seconds (nack / do
    not delete it). ``reason`` is ``"in_progress"`` when a committed attempt holds a
    live lease (``retry_after`` is then the time left on it), and ``"lock"`` or
    ``"contended"`` when the claim, the block's writes or storing its result gave up
    waiting on another transaction (a lock timeout, or chosen as a deadlock victim).
    """

    def __init__(self, message: str, retry_after: int = 1, reason: str = "lock") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class Unavailable(OnceError):
    """The idempotency table could not be reached; the original error is the cause."""


@dataclass
class Run:
    """What the block sees: ``first`` is ``True`` when this delivery must do the work.

    Set ``result`` (JSON: dicts, lists, strings, numbers, booleans, ``None``) before
    the block ends; it is stored with the record and handed to every redelivery.
    """

    key: str
    scope: str
    first: bool
    id: Any = None
    result: Any = field(default=None)

    @property
    def replayed(self) -> bool:
        return not self.first


class Once:
    """The context manager ``once(key, scope=...)`` returns; see the module docstring."""

    def __init__(
        self,
        key: object,
        *,
        scope: str,
        payload: Any = _NO_PAYLOAD,
        ttl: timedelta | None = None,
        lease: timedelta | None = None,
    ) -> None:
        self.key = _fitted_key(key)
        self.scope = _fitted_scope(scope)
        self.payload = payload
        self.ttl = ttl
        self.lease = lease
        self._attempt: Attempt | None = None
        self._run: Run | None = None

    def __call__(self, function: Any) -> Any:
        raise TypeError(
            "once(<key>, scope=...) is a context manager. To decorate a function, derive "
            "the key from its arguments: @once(key=lambda message: message['id'])."
        )

    def __enter__(self) -> Run:
        from django_idempotency import encryption, engine, operation

        fingerprint, earlier = _fingerprints(self.payload)
        intent = operation.Intent(
            scope=self.scope, key=self.key, fingerprint=fingerprint, earlier=earlier
        )
        policy = operation.Policy(
            mode=engine.Mode.SINGLE_TRANSACTION,
            lease=self.lease or conf.LEASE,
            ttl=self.ttl or conf.TTL,
            wait=conf.WAIT,
        )
        attempt = engine.Attempt(intent, policy)
        started = attempt.begin()
        if isinstance(started, operation.Replay):
            record = started.record
            try:
                _headers, body = encryption.unseal(record.response_headers, record.response_body)
            except encryption.CannotDecrypt as error:
                raise Unavailable(
                    f"No configured ENCRYPTION_KEYS opens the result of operation {record.pk}."
                ) from error
            result = json.loads(body) if body is not None else None
            return Run(self.key, self.scope, first=False, id=started.record.pk, result=result)
        if not isinstance(started, operation.Operation):
            self._refuse(started)
        self._attempt = attempt
        self._run = Run(self.key, self.scope, first=True, id=started.id)
        return self._run

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        """Commit the block's writes with its result, through the engine's one ladder.

        A failure the engine answers (a lock conflict, the store failing) is raised as
        ``Busy`` or ``Unavailable`` from its cause; any other error of the block
        propagates as it is, after the rollback.
        """
        from django_idempotency import encryption, operation

        attempt, self._attempt = self._attempt, None
        run, self._run = self._run, None
        if attempt is None or run is None:
            return
        if exc is not None:
            failed = attempt.fail(exc)
            if failed is not None:
                self._refuse(failed, exc, ran=True)
            return
        try:
            body = json.dumps(run.result, allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            attempt.fail(error)
            raise TypeError(
                f"once: run.result must be JSON (dict, list, str, number, bool, None), "
                f"got {type(run.result).__name__}; nothing was committed."
            ) from error
        if len(body) > conf.MAX_RESPONSE_BYTES:
            too_large = ValueError(
                f"once: run.result is {len(body)} bytes, over MAX_RESPONSE_BYTES; "
                "store an id instead of the data. Nothing was committed."
            )
            attempt.fail(too_large)
            raise too_large
        stored = encryption.seal(
            operation.Stored(status=200, headers={"Content-Type": "application/json"}, body=body)
        )
        finished = attempt.finish(None, stored)
        if not isinstance(finished, operation.Executed):
            self._refuse(finished, ran=True)

    def _refuse(
        self, outcome: NotRun, cause: BaseException | None = None, *, ran: bool = False
    ) -> NoReturn:
        """Tell the caller why the block must not run, or why its work did not commit."""
        from django_idempotency import operation

        where = f"Key {self.key!r} in scope {self.scope!r}"
        if isinstance(outcome, operation.Mismatch):
            raise KeyReused(f"{where} was already used with a different payload.")
        if isinstance(outcome, operation.Expired):
            raise KeyExpired(f"{where} was processed before; its result is no longer kept.")
        if isinstance(outcome, operation.InProgress):
            raise Busy(f"{where} is being processed.", outcome.retry_after, reason="in_progress")
        if isinstance(outcome, operation.Conflict):
            undone = "nothing was committed" if ran else "nothing ran"
            raise Busy(
                f"{where}: {outcome.reason}; {undone}.",
                outcome.retry_after,
                reason=outcome.reason,
            ) from cause
        assert isinstance(outcome, operation.StoreDown), outcome
        raise Unavailable("The idempotency store is unavailable.") from outcome.error


@overload
def once(
    key: object,
    *,
    scope: str,
    payload: Any = ...,
    ttl: timedelta | None = ...,
    lease: timedelta | None = ...,
) -> Once: ...


@overload
def once(
    *,
    key: Callable[..., object],
    scope: str | None = ...,
    payload: Callable[..., Any] | None = ...,
    ttl: timedelta | None = ...,
    lease: timedelta | None = ...,
) -> Callable[[F], F]: ...


def once(
    key: Any,
    *,
    scope: str | None = None,
    payload: Any = _NO_PAYLOAD,
    ttl: timedelta | None = None,
    lease: timedelta | None = None,
) -> Once | Callable[[F], F]:
    """Do the block's work once per ``(scope, key)``; hand every repeat the stored result.

    ``once("msg:123", scope="billing")`` is a context manager. ``scope`` is required
    there: it names the consumer, so two consumers of the same message (a fan-out)
    each process it once instead of one silently skipping it.

    ``@once(key=callable)`` decorates a handler: ``key`` (and ``payload``, if given)
    are called with the handler's arguments; ``scope`` defaults to the handler's
    dotted name. The handler's return value is the stored result.

    ``payload`` is fingerprinted: the same key with another payload raises
    ``KeyReused``. ``ttl`` (default ``IDEMPOTENCY["TTL"]``) is how long the record
    deduplicates; keep it longer than the broker's longest redelivery delay.
    """
    if callable(key):
        return _decorator(key, scope=scope, payload=payload, ttl=ttl, lease=lease)
    if scope is None:
        raise TypeError(
            "once(key, scope=...) needs a scope: the name of the consumer (e.g. "
            "scope='billing'), so that two consumers of one message both run."
        )
    return Once(key, scope=scope, payload=payload, ttl=ttl, lease=lease)


def _decorator(
    key: Callable[..., object],
    *,
    scope: str | None,
    payload: Any,
    ttl: timedelta | None,
    lease: timedelta | None,
) -> Callable[[F], F]:
    if payload is not _NO_PAYLOAD and payload is not None and not callable(payload):
        raise TypeError("@once(payload=...) takes a callable of the handler's arguments.")

    def decorate(function: F) -> F:
        name = scope or f"{function.__module__}.{function.__qualname__}"

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            body = payload(*args, **kwargs) if callable(payload) else _NO_PAYLOAD
            with Once(key(*args, **kwargs), scope=name, payload=body, ttl=ttl, lease=lease) as run:
                if run.first:
                    run.result = function(*args, **kwargs)
            return run.result

        return wrapper  # type: ignore[return-value]

    return decorate


def _fitted_key(value: object) -> str:
    """``str(value)`` if the key column holds it as it is (``keys.fit_key``).

    Refused, never hashed or trimmed: a key the store cannot hold is a bug in the
    caller, and retrying the message would not make it fit.
    """
    if value is None:
        raise InvalidKey("once: the key is None.")
    try:
        return fit_key(str(value))
    except InvalidKey as error:
        reason = str(error)
        raise InvalidKey(f"once: {reason[:1].lower()}{reason[1:]}") from None


def _fitted_scope(value: object) -> str:
    """The scope as the HTTP path fits a scope (``keys.fit_scope``); refused when empty."""
    if value is None:
        raise InvalidKey("once: the scope is None.")
    text = str(value)
    if not text:
        raise InvalidKey("once: the scope is empty.")
    return fit_scope(text)


def _fingerprints(payload: Any) -> tuple[str, tuple[str, ...]]:
    """The payload's keyed fingerprint and its earlier forms (``keys.fingerprints``)."""
    return fingerprints(digest(None if payload is _NO_PAYLOAD else {"payload": payload}))


def _fingerprint(payload: Any) -> str:
    """The fingerprint a record made now stores for ``payload``."""
    return _fingerprints(payload)[0]
