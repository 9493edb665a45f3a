"""The state machine: claim a key, run the work once, remember its result.

Framework-agnostic: the adapter hands in an ``Intent`` (who and what), a ``Policy``
(how), the work to run and a ``capture`` function that turns the work's result into
what should be stored, or ``None`` when the attempt failed and must leave no trace.
The engine answers with one ``Outcome``; the adapter turns that into HTTP.
"""

from __future__ import annotations

import enum
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from django_idempotency import signals
from django_idempotency.errors import (
    STORE_ERRORS,
    inside_transaction,
    is_lock_conflict,
    marked_for_rollback,
)
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet, Status

logger = logging.getLogger("django_idempotency")

R = TypeVar("R")
CLAIM_ROUNDS = 5
RELEASE_TRIES = 5
RELEASE_PAUSE = 0.02


class Mode(enum.Enum):
    TWO_PHASE = "two_phase"
    SINGLE_TRANSACTION = "single_transaction"
    NON_ATOMIC = "non_atomic"


@dataclass(frozen=True)
class Intent:
    """Who and what. The adapters fit each value to its column (``keys.fit_*``)."""

    scope: str
    key: str
    fingerprint: str
    method: str = ""
    route: str = ""


@dataclass(frozen=True)
class Policy:
    mode: Mode
    lease: timedelta
    ttl: timedelta
    wait: timedelta = timedelta(0)

    @property
    def lock_wait(self) -> timedelta:
        """How long a single-transaction claim waits on a duplicate's uncommitted one."""
        return self.wait or self.lease


@dataclass(frozen=True)
class Stored:
    """What to remember of a successful attempt; ``body=None`` if it was too large."""

    status: int
    headers: dict[str, str]
    body: bytes | None


class StoreFailed(Exception):
    """A checkpoint could not be written: the store failed, not the view."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class LeaseLost(Exception):
    """This attempt's lease was taken over by a retry: its work must not commit."""


class Operation:
    """What the work sees of its operation (``request.idempotency`` in views)."""

    guarded = True

    def __init__(self, record: IdempotencyRecord, records: IdempotencyRecordQuerySet) -> None:
        self._record = record
        self._records = records

    @property
    def id(self) -> Any:
        return self._record.pk

    @property
    def key(self) -> str:
        return self._record.key

    @property
    def scope(self) -> str:
        return self._record.scope

    @property
    def attempt(self) -> int:
        return self._record.attempts

    @property
    def recovery_point(self) -> str:
        return self._record.recovery_point

    def derived_key(self, name: str) -> str:
        """A key for a downstream call, the same on every attempt of this operation.

        Built from the operation id, never from the client's key, so it does not leak
        the key and is unique across scopes.
        """
        return f"{self._record.pk}:{name}"

    def checkpoint(self, name: str) -> None:
        """Record progress of multi-step work; a retry after a crash resumes from it."""
        try:
            written = self._records.checkpoint(self._record, name)
        except STORE_ERRORS as exc:
            raise StoreFailed(exc) from exc
        if not written:
            raise LeaseLost(f"operation {self._record.pk} was taken over")


class Unguarded:
    """``request.idempotency`` for a request the guard let through (no key, safe method).

    It has the operation's interface so a view written for ``atomic=False`` still runs,
    but nothing is remembered: there is no operation id (the status endpoint knows of
    nothing to show), and ``derived_key`` is unique to this one request.
    """

    guarded = False
    id = None
    key = None
    scope = ""
    attempt = 1
    recovery_point = ""

    def __init__(self) -> None:
        self._request_id = uuid.uuid4()

    def derived_key(self, name: str) -> str:
        return f"{self._request_id}:{name}"

    def checkpoint(self, name: str) -> None:
        self.recovery_point = name


@dataclass(frozen=True)
class Executed(Generic[R]):
    """The work ran. ``record`` is ``None`` when its result was not stored."""

    value: R
    record: IdempotencyRecord | None


@dataclass(frozen=True)
class Replay:
    record: IdempotencyRecord


@dataclass(frozen=True)
class InProgress:
    record: IdempotencyRecord
    retry_after: int


@dataclass(frozen=True)
class Mismatch:
    record: IdempotencyRecord


@dataclass(frozen=True)
class Busy:
    """A lock conflict or a lost lease: nothing was committed, retry shortly."""

    reason: str
    retry_after: int = 1


@dataclass(frozen=True)
class Unavailable:
    error: BaseException


Outcome = Executed[R] | Replay | InProgress | Mismatch | Busy | Unavailable


def records_database() -> str:
    """Records always live on the write database: a replica's stale read is a duplicate."""
    return router.db_for_write(IdempotencyRecord) or "default"


def execute(
    intent: Intent,
    policy: Policy,
    work: Callable[[Operation], R],
    capture: Callable[[R], Stored | None],
) -> Outcome[R]:
    records = IdempotencyRecord.objects.using(records_database())
    if policy.mode is Mode.SINGLE_TRANSACTION or (
        policy.mode is Mode.TWO_PHASE and inside_transaction(connections[records.db])
    ):
        # Inside a transaction the claim cannot commit first: claim, work and "done"
        # commit with that transaction instead, which keeps the work's writes and the
        # record together as two-phase does.
        return _single_transaction(records, intent, policy, work, capture)
    try:
        claimed = _claim_committed(records, intent, policy)
    except STORE_ERRORS as exc:
        return _database_failure(exc, intent)
    if not isinstance(claimed, IdempotencyRecord):
        return claimed
    if policy.mode is Mode.NON_ATOMIC:
        return _run_outside_transaction(records, claimed, intent, policy, work, capture)
    return _run_in_transaction(records, claimed, intent, policy, work, capture)


def _claim_committed(
    records: IdempotencyRecordQuerySet, intent: Intent, policy: Policy
) -> IdempotencyRecord | Replay | InProgress | Mismatch | Busy:
    """Phase 1: the claim must be visible to other requests before the work starts.

    In autocommit every statement commits by itself. Inside a transaction (a test
    case, or a view that forgot to opt out of ATOMIC_REQUESTS) ``durable=True``
    refuses to run nested instead of silently claiming inside someone's transaction:
    only ``atomic=False`` gets here inside one (two-phase runs as single-transaction
    there), and its checkpoints would outlive the writes they describe. System check
    E014 finds the URLs wired that way at start-up. With autocommit turned off and no
    atomic block, nothing would commit the claim (nor, later, the work): refuse that too.
    """
    connection = connections[records.db]
    if inside_transaction(connection):
        raise RuntimeError(
            f"An atomic=False guard runs inside a transaction on database {records.db!r} "
            "(ATOMIC_REQUESTS, or an atomic block around the view): its claim and "
            "checkpoints must commit before the work acts outside the database. Opt the "
            "view out with transaction.non_atomic_requests, or put @idempotent above "
            "@api_view / decorate dispatch; see system check django_idempotency.E014."
        )
    if not connection.in_atomic_block:
        if not connection.get_autocommit():
            raise RuntimeError(
                f"Autocommit is off on database {records.db!r}: the idempotency claim "
                "could not commit before the work starts. Turn autocommit on, or use "
                "single_transaction=True inside your own transaction."
            )
        return _claim(records, intent, policy)
    with transaction.atomic(using=records.db, durable=True):
        return _claim(records, intent, policy)


def _claim(
    records: IdempotencyRecordQuerySet,
    intent: Intent,
    policy: Policy,
    wait: timedelta | None = None,
) -> IdempotencyRecord | Replay | InProgress | Mismatch | Busy:
    for _ in range(CLAIM_ROUNDS):
        existing, created = records.claim(
            scope=intent.scope,
            key=intent.key,
            fingerprint=intent.fingerprint,
            method=intent.method,
            route=intent.route,
            lease=policy.lease,
            ttl=policy.ttl,
            wait=wait,
        )
        if created:
            assert existing is not None
            _send(signals.operation_started, existing, intent)
            return existing
        if existing is None:
            continue  # released between our insert and our read
        now = timezone.now()
        if existing.is_expired(now):
            records.discard_expired(existing)
            continue
        if existing.fingerprint != intent.fingerprint:
            _send(signals.operation_conflict, existing, intent, reason="mismatch")
            return Mismatch(existing)
        if existing.status == Status.COMPLETED:
            _send(signals.operation_replayed, existing, intent)
            return Replay(existing)
        if existing.lease_is_live(now):
            assert existing.locked_until is not None
            seconds = math.ceil((existing.locked_until - now).total_seconds())
            _send(signals.operation_conflict, existing, intent, reason="in_progress")
            return InProgress(existing, max(seconds, 1))
        taken = _take_over(records, existing, policy)
        if taken is not None:
            _send(signals.operation_started, taken, intent)
            return taken
    return Busy("contended")


def _take_over(
    records: IdempotencyRecordQuerySet, record: IdempotencyRecord, policy: Policy
) -> IdempotencyRecord | None:
    """Take a dead lease, unless its attempt still holds the row inside its transaction."""
    with transaction.atomic(using=records.db):
        if not records.lock(record, nowait=True):
            return None
        return records.take_over(record, policy.lease)


def _run_in_transaction(
    records: IdempotencyRecordQuerySet,
    record: IdempotencyRecord,
    intent: Intent,
    policy: Policy,
    work: Callable[[Operation], R],
    capture: Callable[[R], Stored | None],
) -> Outcome[R]:
    """Phase 2: the work's writes and "done" commit together or not at all.

    The row lock waits (no NOWAIT): a retry whose take-over fails holds our row for an
    instant and must not make this attempt give up. If the lock itself times out or
    deadlocks, someone is acting on our record (a take-over of an expired lease), so it
    is left to them rather than released.
    """
    stored: Stored | None = None
    stage = "lock"
    try:
        with transaction.atomic(using=records.db):
            if not records.lock(record):
                raise LeaseLost
            stage = "work"
            value = work(Operation(record, records))
            stored = _storable(records, value, capture)
            stage = "finalize"
            if stored is None:
                transaction.set_rollback(True, using=records.db)
            elif not _finalize(records, record, stored, policy):
                raise LeaseLost
            stage = "commit"
    except LeaseLost:
        _send(signals.operation_conflict, record, intent, reason="lease_lost")
        return Busy("lease_lost")
    except StoreFailed as exc:
        _forget(records, record)
        return _database_failure(exc.error, intent, record)
    except STORE_ERRORS as exc:
        if not (stage == "lock" and is_lock_conflict(exc)):
            _forget(records, record)
        if _belongs_to_work(exc, stage):
            raise
        return _database_failure(exc, intent, record)
    except BaseException:
        _forget(records, record)
        raise
    if stored is None:
        _forget(records, record)
        return Executed(value, None)
    _send(signals.operation_completed, record, intent)
    return Executed(value, record)


def _run_outside_transaction(
    records: IdempotencyRecordQuerySet,
    record: IdempotencyRecord,
    intent: Intent,
    policy: Policy,
    work: Callable[[Operation], R],
    capture: Callable[[R], Stored | None],
) -> Outcome[R]:
    """``atomic=False``: the work may reach outside the database, so a failed attempt
    keeps its record (ending the lease at once) instead of forgetting it: the retry
    takes over the same operation id, recovery point and derived keys."""
    try:
        value = work(Operation(record, records))
        stored = capture(value)
    except LeaseLost:
        _send(signals.operation_conflict, record, intent, reason="lease_lost")
        return Busy("lease_lost")
    except StoreFailed as exc:
        _unlock(records, record)
        return _database_failure(exc.error, intent, record)
    except STORE_ERRORS as exc:
        _unlock(records, record)
        if is_lock_conflict(exc):
            _send(signals.operation_conflict, record, intent, reason="lock")
            return Busy("lock")
        raise
    except BaseException:
        _unlock(records, record)
        raise
    if stored is None:
        _unlock(records, record)
        return Executed(value, None)
    try:
        finalized = _finalize(records, record, stored, policy)
    except STORE_ERRORS as exc:
        _unlock(records, record)
        return _database_failure(exc, intent, record)
    if not finalized:
        _send(signals.operation_conflict, record, intent, reason="lease_lost")
        return Busy("lease_lost")
    _send(signals.operation_completed, record, intent)
    return Executed(value, record)


def _single_transaction(
    records: IdempotencyRecordQuerySet,
    intent: Intent,
    policy: Policy,
    work: Callable[[Operation], R],
    capture: Callable[[R], Stored | None],
) -> Outcome[R]:
    """Claim, work and finalize in one transaction: one commit, no visible IN_PROGRESS.

    A concurrent duplicate's claim waits on the unique index until the first commits
    (then replays) or rolls back (then runs).
    """
    stored: Stored | None = None
    claimed: Any = None
    stage = "claim"
    try:
        with transaction.atomic(using=records.db):
            claimed = _claim(records, intent, policy, wait=policy.lock_wait)
            if not isinstance(claimed, IdempotencyRecord):
                return claimed  # type: ignore[no-any-return]
            stage = "work"
            value = work(Operation(claimed, records))
            stored = _storable(records, value, capture)
            stage = "finalize"
            if stored is None:
                transaction.set_rollback(True, using=records.db)
            elif not _finalize(records, claimed, stored, policy):
                raise LeaseLost
            stage = "commit"
    except LeaseLost:
        return Busy("lease_lost")
    except StoreFailed as exc:
        return _database_failure(exc.error, intent)
    except STORE_ERRORS as exc:
        if _belongs_to_work(exc, stage):
            raise
        return _database_failure(exc, intent)
    if stored is None:
        return Executed(value, None)
    _send(signals.operation_completed, claimed, intent)
    return Executed(value, claimed)


def _storable(
    records: IdempotencyRecordQuerySet, value: R, capture: Callable[[R], Stored | None]
) -> Stored | None:
    """What to finalize the work's transaction with; ``None``: roll it back, store nothing.

    Work that caught a database error itself (an ``IntegrityError`` it answers with a
    409) or called ``set_rollback(True)`` doomed the transaction: its answer goes to
    the client, and nothing of the attempt, the record included, may commit.
    """
    stored = capture(value)
    if stored is not None and marked_for_rollback(connections[records.db]):
        return None
    return stored


def _belongs_to_work(exc: Exception, stage: str) -> bool:
    """Whether a database error is the work's own bug (it propagates, a 500) rather than
    the store's: a lock conflict anywhere is a 409, any failure of our own statements
    (begin, claim, lock, finalize, or a commit not refused for the work's data) a 503."""
    if is_lock_conflict(exc):
        return False
    return stage == "work" or (stage == "commit" and isinstance(exc, IntegrityError))


def _finalize(
    records: IdempotencyRecordQuerySet, record: IdempotencyRecord, stored: Stored, policy: Policy
) -> bool:
    return records.finalize(
        record, status=stored.status, headers=stored.headers, body=stored.body, ttl=policy.ttl
    )


def _forget(records: IdempotencyRecordQuerySet, record: IdempotencyRecord) -> None:
    """Release the key; a brief lock conflict is retried, since a key left claimed makes
    every retry wait for the whole lease."""
    for attempt in range(RELEASE_TRIES):
        try:
            records.release(record)
            return
        except STORE_ERRORS as exc:
            if not is_lock_conflict(exc) or attempt == RELEASE_TRIES - 1:
                break
            time.sleep(RELEASE_PAUSE * 2**attempt)
    logger.warning("Could not release %s; a retry takes over after its lease.", record.pk)


def _unlock(records: IdempotencyRecordQuerySet, record: IdempotencyRecord) -> None:
    try:
        records.unlock(record)
    except STORE_ERRORS:
        logger.warning("Could not unlock %s; a retry takes over after its lease.", record.pk)


def _database_failure(
    exc: Exception, intent: Intent, record: IdempotencyRecord | None = None
) -> Busy | Unavailable:
    if is_lock_conflict(exc):
        _send(signals.operation_conflict, record, intent, reason="lock")
        return Busy("lock")
    logger.error("Idempotency store unavailable: %s", exc, exc_info=exc)
    return Unavailable(exc)


def _send(signal: Any, record: IdempotencyRecord | None, intent: Intent, **extra: Any) -> None:
    if signal.receivers:
        signal.send(
            sender=IdempotencyRecord, record=record, scope=intent.scope, key=intent.key, **extra
        )


@dataclass(frozen=True)
class Claimed:
    """This attempt holds the claim inside the block's open transaction: do the work."""

    operation: Operation


class Block:
    """Single-transaction mode for a block of code instead of a callable (``once``).

    ``with Block(intent, policy) as outcome:`` opens one transaction and claims the key
    in it. When ``outcome`` is ``Claimed``, the block's writes share that transaction:
    set ``stored`` before the block ends and the record is finalized in the same
    transaction, so "done" commits with the writes or not at all. An exception in the
    block, or ``stored`` left ``None``, rolls both back and leaves no record. Any other
    outcome means the work must not run; the block's transaction then has nothing to
    commit. A crash anywhere inside leaves nothing behind: the database rolls back.
    """

    def __init__(self, intent: Intent, policy: Policy) -> None:
        self.intent = intent
        self.policy = policy
        self.stored: Stored | None = None
        self._records = IdempotencyRecord.objects.using(records_database())
        self._atomic: transaction.Atomic | None = None
        self._claimed: IdempotencyRecord | None = None

    def __enter__(self) -> Claimed | Replay | InProgress | Mismatch | Busy | Unavailable:
        records = self._records
        atomic = transaction.atomic(using=records.db)
        try:
            atomic.__enter__()
        except STORE_ERRORS as exc:
            return _database_failure(exc, self.intent)
        try:
            claimed = _claim(records, self.intent, self.policy, wait=self.policy.lock_wait)
        except STORE_ERRORS as exc:
            atomic.__exit__(type(exc), exc, exc.__traceback__)
            return _database_failure(exc, self.intent)
        except BaseException as exc:
            atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._atomic = atomic
        if not isinstance(claimed, IdempotencyRecord):
            return claimed
        self._claimed = claimed
        return Claimed(Operation(claimed, records))

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        atomic, self._atomic = self._atomic, None
        if atomic is None:
            return
        record = self._claimed
        finalized = False
        if exc is None and record is not None:
            try:
                if self.stored is None or marked_for_rollback(connections[self._records.db]):
                    transaction.set_rollback(True, using=self._records.db)
                elif _finalize(self._records, record, self.stored, self.policy):
                    finalized = True
                else:
                    raise LeaseLost(f"operation {record.pk} was taken over")
            except BaseException as error:
                atomic.__exit__(type(error), error, error.__traceback__)
                raise
        atomic.__exit__(exc_type, exc, traceback)
        if finalized and record is not None:
            _send(signals.operation_completed, record, self.intent)
