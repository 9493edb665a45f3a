"""The state machine: claim a key, run the work once, remember its result.

Framework-agnostic: the adapter hands in an ``Intent`` (who and what), a ``Policy``
(how), the work to run and a ``capture`` function that turns the work's result into
what should be stored, or ``None`` when the attempt failed and must leave no trace.
The engine answers with one outcome (``django_idempotency.operation``); the adapter
turns that into HTTP. Every mode runs through the one ``Attempt``: a ``Mode`` only says
what sets it apart, so the failure ladder exists once.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import IntegrityError, connections, transaction

from django_idempotency import signals
from django_idempotency.conf import conf
from django_idempotency.database import (
    STORE_ERRORS,
    fresh_connection,
    inside_transaction,
    is_lock_conflict,
    is_serialization_failure,
    marked_for_rollback,
    session_locks,
)
from django_idempotency.models import (
    IdempotencyRecord,
    IdempotencyRecordQuerySet,
    Liveness,
    Status,
    records_database,
)
from django_idempotency.operation import (
    Conflict,
    Executed,
    Expired,
    InProgress,
    Intent,
    LeaseLost,
    Mismatch,
    NotRun,
    Operation,
    Outcome,
    Policy,
    Replay,
    Stored,
    StoreDown,
    StoreFailed,
)

logger = logging.getLogger("django_idempotency")

R = TypeVar("R")
CLAIM_ROUNDS = 5
RELEASE_TRIES = 5
RELEASE_PAUSE = 0.02
#: The first pause before an attempt is run again (jittered, doubling each time).
RETRY_PAUSE = 0.02
#: A retry that finds the holder alive (it holds its lock) comes back this soon.
ALIVE_RETRY_AFTER = 1
#: An attempt takes its lock one statement after its claim commits; a free lock on an
#: attempt younger than this (database clock) may be that instant, not a crash.
LOCK_GRACE = timedelta(seconds=1)
Undo = Callable[[IdempotencyRecordQuerySet, IdempotencyRecord], bool]


def _forget(records: IdempotencyRecordQuerySet, record: IdempotencyRecord) -> bool:
    """Release the key; a brief lock conflict is retried, since a key left claimed makes
    every retry wait (for the whole lease where the attempt had no lock to show)."""
    return _undo_surely(records.release, records, record, "release")


def _unlock(records: IdempotencyRecordQuerySet, record: IdempotencyRecord) -> bool:
    return _undo_surely(records.unlock, records, record, "unlock")


def _roll_back(records: IdempotencyRecordQuerySet, record: IdempotencyRecord) -> bool:
    """Nothing left to undo: the claim was in the work's transaction and went with it."""
    return True


def _undo_surely(
    undo: Callable[..., bool],
    records: IdempotencyRecordQuerySet,
    record: IdempotencyRecord,
    verb: str,
) -> bool:
    """Run ``undo`` on the request's connection, retrying brief lock conflicts; if that
    connection has failed (the usual reason an attempt is undone), on a fresh one."""
    for attempt in range(RELEASE_TRIES):
        try:
            undo(record)
            return True
        except STORE_ERRORS as exc:
            if not is_lock_conflict(exc):
                break
            if attempt == RELEASE_TRIES - 1:
                logger.warning("Could not %s %s: %s", verb, record.pk, exc)
                return False
            time.sleep(RELEASE_PAUSE * 2**attempt)
    try:
        with fresh_connection(connections[records.db]) as other:
            if other is not None:
                undo(record, connection=other)
                return True
    except STORE_ERRORS as exc:
        logger.warning("Could not %s %s on a fresh connection either: %s", verb, record.pk, exc)
    return False


class Mode(enum.Enum):
    """What sets one way of running apart; ``Attempt`` does the rest.

    A new mode is one member: whether the work runs in a transaction that "done"
    commits with (``atomic``), whether the claim joins that transaction instead of
    committing first (``shares_transaction``), and how a failed attempt is undone
    (``undo``): forget the claim because its work rolled back, unlock it because the
    work may have acted outside the database and a retry must continue the same
    operation, or nothing because the claim rolled back with the work.
    """

    #                   atomic, shares_transaction, undo
    TWO_PHASE = (True, False, _forget)
    SINGLE_TRANSACTION = (True, True, _roll_back)
    NON_ATOMIC = (False, False, _unlock)

    def __init__(self, atomic: bool, shares_transaction: bool, undo: Undo) -> None:
        self.atomic = atomic
        self.shares_transaction = shares_transaction
        self.undo = undo


def execute(
    intent: Intent,
    policy: Policy,
    work: Callable[[Operation], R],
    capture: Callable[[R], Stored | None],
) -> Outcome[R]:
    """Run ``work`` once for the intent; again, a few times, where the database refused
    an atomic attempt for a serialization failure or a deadlock (``CONFLICT_RETRIES``).

    Nothing of such an attempt committed and nothing left the database (atomic modes
    only: an ``atomic=False`` view may have acted outside), so the client would only be
    told to send again what the guard can run again now.
    """
    for number in range(conf.CONFLICT_RETRIES + 1):
        attempt = Attempt(intent, policy)
        outcome = _run_once(attempt, work, capture)
        if not (
            isinstance(outcome, Conflict)
            and outcome.serialization
            and attempt.repeatable
            and number < conf.CONFLICT_RETRIES
        ):
            return outcome
        logger.info(
            "Running %s again after a serialization failure (try %d).", intent.key, number + 2
        )
        time.sleep(random.uniform(0, RETRY_PAUSE * 2**number))
    raise AssertionError("unreachable")


def _run_once(
    attempt: Attempt, work: Callable[[Operation], R], capture: Callable[[R], Stored | None]
) -> Outcome[R]:
    operation = attempt.begin()
    if not isinstance(operation, Operation):
        return operation
    try:
        value = work(operation)
        stored = capture(value)
    except BaseException as exc:
        outcome = attempt.fail(exc)
        if outcome is None:
            raise
        return outcome
    return attempt.finish(value, stored)


class Attempt:
    """One attempt at an operation, in three steps every mode shares.

    ``begin`` claims the key (and opens the work's transaction where the mode has one),
    ``finish`` stores the result and commits, ``fail`` undoes an attempt that raised
    and decides what the error means. ``execute`` runs a callable between them;
    ``once`` runs a ``with`` block there. ``stage`` names the step in flight, which is
    what tells the work's own database errors from the store's.

    While the work runs, the attempt shows it is alive by a lock the database drops
    with its connection (``liveness``): the record's row lock in the atomic modes, a
    session lock for ``atomic=False`` (``SESSION_LOCKS``). A retry that finds the lock
    free takes over at once instead of waiting for the lease.
    """

    def __init__(self, intent: Intent, policy: Policy) -> None:
        self.intent = intent
        self.policy = policy
        self.records: IdempotencyRecordQuerySet = IdempotencyRecord.objects.using(
            records_database(intent.database, scope=intent.scope, key=intent.key)
        )
        self.mode = policy.mode
        connection = connections[self.records.db]
        nested = inside_transaction(connection)
        if self.mode.atomic and nested:
            # Inside a transaction the claim cannot commit first: claim, work and "done"
            # commit with that transaction instead, which keeps the work's writes and the
            # record together as two-phase does.
            self.mode = Mode.SINGLE_TRANSACTION
        #: Whether a serialization failure may be answered by running it again: not for
        #: ``atomic=False``, nor inside someone's transaction, whose snapshot stays.
        self.repeatable = self.mode.atomic and not nested
        self.liveness = _liveness(self.mode, connection)
        self.record: IdempotencyRecord | None = None
        self.stage = "claim"
        self.holds_session = False
        self._atomic: transaction.Atomic | None = None

    def begin(self) -> Operation | NotRun:
        """The operation when the work must run now; otherwise why it must not."""
        try:
            claimed = self._claim()
            if not isinstance(claimed, IdempotencyRecord):
                self._close()
                return claimed
            self.record = claimed
            if self.mode.atomic and self._atomic is None:
                # The claim committed on its own: our lease may have passed to a retry
                # since. The row lock waits (no NOWAIT): a retry whose take-over fails
                # holds our row for an instant and must not make this attempt give up.
                self.stage = "lock"
                self._open()
                if not self.records.lock(claimed):
                    raise LeaseLost
            elif self.liveness == Liveness.SESSION and not self.holds_session:
                self.stage = "lock"
                self.holds_session = self.records.hold_session(claimed)
                if not self.holds_session:
                    raise LeaseLost
            self.stage = "work"
            return Operation(claimed, self.records)
        except BaseException as exc:
            outcome = self.fail(exc)
            if outcome is None:
                raise
            return outcome

    def finish(self, value: R, stored: Stored | None) -> Outcome[R]:
        """Store ``stored`` (``None``: store nothing) and commit; then the outcome."""
        assert self.record is not None
        try:
            self.stage = "finalize"
            stored = self._storable(stored)
            if stored is None:
                if self._atomic is not None:
                    transaction.set_rollback(True, using=self.records.db)
            elif self._finalize(stored):
                self.holds_session = False
            else:
                raise LeaseLost
            self.stage = "commit"
            self._close()
        except BaseException as exc:
            outcome = self.fail(exc)
            if outcome is None:
                raise
            return outcome
        if stored is None:
            self._undo()
            return Executed(value, None)
        _send(signals.operation_completed, self.record, self.intent)
        return Executed(value, self.record)

    def fail(self, error: BaseException) -> NotRun | None:
        """Undo the attempt; the outcome ``error`` means, or ``None`` to let it propagate.

        A lock conflict on our own row lock is left alone: someone is acting on our
        record (a take-over of an expired lease), so the record is theirs to deal with.
        """
        self._close(error)
        if isinstance(error, LeaseLost):
            self._end_session()
            return self._lease_lost()
        cause = error.error if isinstance(error, StoreFailed) else error
        undone = True
        if self.record is not None and not (self.stage == "lock" and is_lock_conflict(cause)):
            undone = self._undo()
        else:
            self._end_session()
        if isinstance(error, StoreFailed) or (
            isinstance(cause, STORE_ERRORS) and not _belongs_to_work(cause, self.stage)
        ):
            return _database_failure(cause, self.intent, self._reported(), self._blocked(undone))
        return None

    def _undo(self) -> bool:
        """Undo the claimed record as the mode says, then let go of the session lock."""
        assert self.record is not None
        try:
            return self.mode.undo(self.records, self.record)
        finally:
            self._end_session()

    def _end_session(self) -> None:
        if not self.holds_session:
            return
        self.holds_session = False
        assert self.record is not None
        try:
            self.records.end_session(self.record)
        except STORE_ERRORS:
            # A failed connection took the lock with it; one that still works but could
            # not run the unlock must not keep it, or the key would look alive.
            connection = connections[self.records.db]
            if not connection.in_atomic_block:
                connection.close()

    def _blocked(self, undone: bool) -> int | None:
        """How long a retry must wait when the key could not be undone: the lease, where
        no lock of ours shows the attempt is gone; otherwise ``None`` (soon)."""
        if undone or self.record is None or self.liveness != Liveness.LEASE:
            return None
        return max(math.ceil(self.policy.lease.total_seconds()), 1)

    def _claim(self) -> IdempotencyRecord | NotRun:
        if self.mode.shares_transaction:
            # A concurrent duplicate's claim waits on the unique index until this
            # transaction commits (then replays) or rolls back (then runs).
            self._open()
            return self._claim_rounds(wait=self.policy.lock_wait)
        return self._claim_committed()

    def _claim_committed(self) -> IdempotencyRecord | NotRun:
        """Phase 1: the claim must be visible to other requests before the work starts.

        In autocommit every statement commits by itself. Inside a transaction (a test
        case, or a view that forgot to opt out of ATOMIC_REQUESTS) ``durable=True``
        refuses to run nested instead of silently claiming inside someone's transaction:
        only ``atomic=False`` gets here inside one (two-phase runs as single-transaction
        there), and its checkpoints would outlive the writes they describe. System check
        E014 finds the URLs wired that way at start-up. With autocommit turned off and no
        atomic block, nothing would commit the claim (nor, later, the work): refuse that
        too.
        """
        db = self.records.db
        connection = connections[db]
        if inside_transaction(connection):
            raise RuntimeError(
                f"An atomic=False guard runs inside a transaction on database {db!r} "
                "(ATOMIC_REQUESTS, or an atomic block around the view): its claim and "
                "checkpoints must commit before the work acts outside the database. Opt the "
                "view out with transaction.non_atomic_requests, or put @idempotent above "
                "@api_view / decorate dispatch; see system check django_idempotency.E014."
            )
        if not connection.in_atomic_block:
            if not connection.get_autocommit():
                raise RuntimeError(
                    f"Autocommit is off on database {db!r}: the idempotency claim "
                    "could not commit before the work starts. Turn autocommit on, or use "
                    "single_transaction=True inside your own transaction."
                )
            return self._claim_rounds()
        with transaction.atomic(using=db, durable=True):
            return self._claim_rounds()

    def _claim_rounds(self, wait: timedelta | None = None) -> IdempotencyRecord | NotRun:
        intent, policy, records = self.intent, self.policy, self.records
        for _ in range(CLAIM_ROUNDS):
            existing, created, now = records.claim(
                scope=intent.scope,
                key=intent.key,
                fingerprint=intent.fingerprint,
                method=intent.method,
                route=intent.route,
                lease=policy.lease,
                ttl=policy.ttl,
                liveness=self.liveness,
                wait=wait,
            )
            if created:
                assert existing is not None
                _send(signals.operation_started, existing, intent)
                return existing
            if existing is None:
                continue  # released between our insert and our read
            assert now is not None  # the database's time, read with the record
            if existing.is_expired(now):
                records.discard_expired(existing)
                continue
            if not intent.matches(existing.fingerprint):
                _send(signals.operation_conflict, existing, intent, reason="mismatch")
                return Mismatch(existing)
            if existing.is_tombstone(now):
                _send(signals.operation_conflict, existing, intent, reason="expired")
                return Expired(existing)
            if existing.status == Status.COMPLETED:
                _send(signals.operation_replayed, existing, intent)
                return Replay(existing)
            live = existing.lease_is_live(now)
            if live and existing.liveness == Liveness.LEASE:
                assert existing.locked_until is not None
                seconds = math.ceil((existing.locked_until - now).total_seconds())
                return self._in_progress(existing, max(seconds, 1))
            if live and _just_claimed(existing, now):
                return self._in_progress(existing, ALIVE_RETRY_AFTER)
            taken = self._take_over(existing, live)
            if taken is ALIVE:
                return self._in_progress(existing, ALIVE_RETRY_AFTER)
            if taken is CONTENDED:
                # Nothing ran: this attempt may run again once the others let go.
                _send(signals.operation_conflict, existing, intent, reason="lock")
                return Conflict("lock", serialization=True)
            if isinstance(taken, IdempotencyRecord):
                _send(signals.operation_started, taken, intent)
                return taken
        return Conflict("contended")

    def _in_progress(self, record: IdempotencyRecord, seconds: int) -> InProgress:
        _send(signals.operation_conflict, record, self.intent, reason="in_progress")
        return InProgress(record, seconds)

    def _take_over(
        self, record: IdempotencyRecord, live: bool
    ) -> IdempotencyRecord | object | None:
        """Take over an attempt that is gone: its lease ended, or (``live``) its lock is free.

        In one short transaction: the row lock without waiting (an atomic attempt holds
        it while it works), then for ``atomic=False`` the session lock, which the taker
        keeps for its own work. ``ALIVE`` when the attempt still holds its lock;
        ``CONTENDED`` when, its lease over, someone else holds the row (another taker):
        the whole attempt may run again (``CONFLICT_RETRIES``); ``None`` when the record
        changed meanwhile (claim again).
        """
        records = self.records
        held = False
        taken: IdempotencyRecord | None = None
        try:
            with transaction.atomic(using=records.db):
                if not records.lock(record, nowait=True):
                    return None
                if Liveness.SESSION in (record.liveness, self.liveness):
                    held = records.hold_session(record)
                    if live and record.liveness == Liveness.SESSION and not held:
                        return ALIVE
                # A hung attempt past its lease may still hold the session lock: the
                # taker then has only its lease to show.
                mine = (
                    self.liveness if held or self.liveness != Liveness.SESSION else Liveness.LEASE
                )
                taken = records.take_over(record, self.policy.lease, mine, live=live)
        except STORE_ERRORS as exc:
            if not is_lock_conflict(exc):
                raise
            # Held: by the attempt itself (alive), or by another retry taking it over,
            # or (SERIALIZABLE on MariaDB) by every retry's shared read lock at once.
            return ALIVE if live else CONTENDED
        finally:
            if held and (taken is None or self.liveness != Liveness.SESSION):
                records.end_session(record)
                held = False
        self.holds_session = held
        if taken is not None:
            self.liveness = taken.liveness
        return taken

    def _finalize(self, stored: Stored) -> bool:
        assert self.record is not None
        return self.records.finalize(
            self.record,
            status=stored.status,
            headers=stored.headers,
            body=stored.body,
            ttl=self.policy.ttl,
            end_session=self.holds_session,
        )

    def _storable(self, stored: Stored | None) -> Stored | None:
        """``None`` when the work doomed its transaction, so that nothing of it commits.

        Work that caught a database error itself (an ``IntegrityError`` it answers with
        a 409) or called ``set_rollback(True)`` did: its answer goes to the client, and
        nothing of the attempt, the record included, may commit.
        """
        if self._atomic is not None and marked_for_rollback(connections[self.records.db]):
            return None
        return stored

    def _reported(self) -> IdempotencyRecord | None:
        """The record to name in signals: none that rolled back with the work."""
        return None if self.mode.shares_transaction else self.record

    def _lease_lost(self) -> Conflict:
        record = self._reported()
        if record is not None:
            _send(signals.operation_conflict, record, self.intent, reason="lease_lost")
        return Conflict("lease_lost")

    def _open(self) -> None:
        atomic = transaction.atomic(using=self.records.db)
        atomic.__enter__()
        self._atomic = atomic

    def _close(self, error: BaseException | None = None) -> None:
        """Commit the open transaction, or roll it back when ``error`` ended the attempt."""
        atomic, self._atomic = self._atomic, None
        if atomic is None:
            return
        if error is None:
            atomic.__exit__(None, None, None)
        else:
            atomic.__exit__(type(error), error, error.__traceback__)


#: ``Attempt._take_over``'s answers when the running attempt holds its lock, and when
#: someone else holds the row of an attempt that is gone.
ALIVE = object()
CONTENDED = object()


def _just_claimed(record: IdempotencyRecord, now: datetime) -> bool:
    """Whether ``record``'s attempt may still be between its claim and its lock."""
    return record.claimed_at is not None and record.claimed_at > now - LOCK_GRACE


def _liveness(mode: Mode, connection: Any) -> str:
    """How an attempt in ``mode`` on ``connection`` shows it is alive (``Liveness``)."""
    if mode.atomic:
        nowait = connection.features.has_select_for_update_nowait
        return Liveness.ROW if nowait else Liveness.LEASE
    return Liveness.SESSION if session_locks(connection) else Liveness.LEASE


def _belongs_to_work(exc: BaseException, stage: str) -> bool:
    """Whether a database error is the work's own bug (it propagates, a 500) rather than
    the store's: a lock conflict anywhere is a 409, any failure of our own statements
    (begin, claim, lock, finalize, or a commit not refused for the work's data) a 503."""
    if is_lock_conflict(exc):
        return False
    return stage == "work" or (stage == "commit" and isinstance(exc, IntegrityError))


def _database_failure(
    exc: BaseException,
    intent: Intent,
    record: IdempotencyRecord | None = None,
    blocked: int | None = None,
) -> Conflict | StoreDown:
    if is_lock_conflict(exc):
        _send(signals.operation_conflict, record, intent, reason="lock")
        return Conflict("lock", serialization=is_serialization_failure(exc))
    logger.error("Idempotency store unavailable: %s", exc, exc_info=exc)
    if blocked is None:
        return StoreDown(exc)
    return StoreDown(exc, retry_after=blocked)


def _send(signal: Any, record: IdempotencyRecord | None, intent: Intent, **extra: Any) -> None:
    if signal.receivers:
        signal.send(
            sender=IdempotencyRecord, record=record, scope=intent.scope, key=intent.key, **extra
        )
