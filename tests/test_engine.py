"""``engine.execute`` without HTTP: the state machine of docs/design.md (3, 4), per mode.

Real commits (``transaction=True``): the two-phase claim commits on its own, and a
release after a rollback must really delete.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, connections, transaction
from django.utils import timezone

from django_idempotency import engine, models, signals
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet, Status
from django_idempotency.operation import (
    Conflict,
    Executed,
    InProgress,
    Mismatch,
    Operation,
    Replay,
    StoreDown,
)
from tests.engine_work import MODES, TRANSACTIONAL, Work, intent, policy, run, store
from tests.factories import IdempotencyRecordFactory
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("mode", MODES)
def test_first_run_stores_the_result(mode) -> None:
    work = Work()
    outcome = run(work, mode)
    assert isinstance(outcome, Executed)
    assert outcome.value == "done"
    record = IdempotencyRecord.objects.get()
    assert outcome.record is not None and outcome.record.pk == record.pk
    assert record.status == Status.COMPLETED
    assert (record.response_status, bytes(record.response_body)) == (201, b"done")
    assert record.response_headers == {"X-Value": "done"}
    assert (record.scope, record.key, record.method, record.route) == ("s", "k1", "POST", "/x/")
    assert record.expires_at - record.completed_at == timedelta(hours=1)
    assert work.calls == 1


@pytest.mark.parametrize("mode", MODES)
def test_second_run_replays_without_working(mode) -> None:
    first = run(Work(), mode)
    work = Work()
    outcome = run(work, mode)
    assert isinstance(outcome, Replay)
    assert outcome.record.pk == first.record.pk
    assert work.calls == 0
    assert Order.objects.count() == 1


@pytest.mark.parametrize("mode", MODES)
def test_other_fingerprint_is_a_mismatch(mode) -> None:
    run(Work(), mode)
    work = Work()
    outcome = run(work, mode, intent=intent(fingerprint="g" * 64))
    assert isinstance(outcome, Mismatch)
    assert work.calls == 0


@pytest.mark.parametrize("mode", MODES)
def test_other_scope_is_another_operation(mode) -> None:
    run(Work(), mode)
    outcome = run(Work(), mode, intent=intent(scope="other"))
    assert isinstance(outcome, Executed)
    assert IdempotencyRecord.objects.count() == 2


@pytest.mark.parametrize("mode", MODES)
def test_live_lease_is_in_progress(mode) -> None:
    record = IdempotencyRecordFactory(
        scope="s",
        key="k1",
        fingerprint="f" * 64,
        locked_until=timezone.now() + timedelta(seconds=42),
    )
    work = Work()
    outcome = run(work, mode, wait=timedelta(milliseconds=100))
    assert isinstance(outcome, InProgress)
    assert outcome.record.pk == record.pk
    assert 1 <= outcome.retry_after <= 42
    assert work.calls == 0


@pytest.mark.parametrize("mode", MODES)
def test_expired_record_is_discarded(mode) -> None:
    old = IdempotencyRecordFactory(expired=True, scope="s", key="k1", fingerprint="x" * 64)
    outcome = run(Work(), mode)
    assert isinstance(outcome, Executed)
    record = IdempotencyRecord.objects.get()
    assert record.pk != old.pk
    assert record.fingerprint == "f" * 64


@pytest.mark.parametrize("mode", TRANSACTIONAL)
def test_failed_capture_rolls_back_and_releases(mode) -> None:
    outcome = run(Work(result="failed"), mode)
    assert isinstance(outcome, Executed)
    assert outcome.value == "failed"
    assert outcome.record is None
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0
    assert isinstance(run(Work(), mode), Executed)
    assert Order.objects.count() == 1


@pytest.mark.parametrize("mode", TRANSACTIONAL)
def test_exception_rolls_back_releases_and_propagates(mode) -> None:
    def explode(operation: Operation) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        run(Work(action=explode), mode)
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


def test_non_atomic_failure_keeps_the_operation_for_the_retry() -> None:
    """Work outside the database may have happened: the retry continues the same
    operation (same id, same derived keys) from its recovery point."""

    def charge_then_crash(operation: Operation) -> None:
        operation.checkpoint("charged")
        raise ConnectionError("provider timed out")

    first = Work(action=charge_then_crash)
    with pytest.raises(ConnectionError):
        run(first, engine.Mode.NON_ATOMIC)
    record = IdempotencyRecord.objects.get()
    assert record.status == Status.IN_PROGRESS
    assert record.recovery_point == "charged"
    assert not record.lease_is_live()
    assert Order.objects.count() == 1  # no transaction: the write stays

    retry = Work()
    outcome = run(retry, engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, Executed)
    assert retry.operations[0].id == first.operations[0].id
    assert retry.operations[0].attempt == 2
    assert retry.operations[0].recovery_point == "charged"
    assert retry.operations[0].derived_key("charge") == first.operations[0].derived_key("charge")
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED


def test_non_atomic_failed_capture_keeps_the_operation() -> None:
    first = Work(result="failed")
    outcome = run(first, engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, Executed)
    assert outcome.record is None
    record = IdempotencyRecord.objects.get()
    assert record.status == Status.IN_PROGRESS
    assert not record.lease_is_live()
    retry = Work()
    assert isinstance(run(retry, engine.Mode.NON_ATOMIC), Executed)
    assert retry.operations[0].id == first.operations[0].id


def _steal_lease(operation: Operation) -> None:
    IdempotencyRecord.objects.filter(pk=operation.id).update(lease_token=uuid.uuid4())


def test_two_phase_fencing_rolls_back_when_the_lease_is_lost() -> None:
    outcome = run(Work(action=_steal_lease))
    assert isinstance(outcome, Conflict)
    assert outcome.reason == "lease_lost"
    assert outcome.retry_after >= 1
    assert Order.objects.count() == 0  # nothing committed twice
    assert not IdempotencyRecord.objects.filter(status=Status.COMPLETED).exists()


def test_non_atomic_finalize_is_fenced_too() -> None:
    outcome = run(Work(action=_steal_lease), engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, Conflict)
    assert outcome.reason == "lease_lost"
    assert IdempotencyRecord.objects.get().status == Status.IN_PROGRESS


def test_checkpoint_after_losing_the_lease_stops_the_work() -> None:
    reached = []

    def steal_then_checkpoint(operation: Operation) -> None:
        _steal_lease(operation)
        operation.checkpoint("step-2")
        reached.append(True)

    outcome = run(Work(action=steal_then_checkpoint), engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, Conflict)
    assert reached == []
    assert IdempotencyRecord.objects.get().recovery_point == ""


def test_operation_describes_the_attempt() -> None:
    work = Work()
    run(work, intent=intent(key="order-7", scope="user:1"))
    operation = work.operations[0]
    record = IdempotencyRecord.objects.get()
    assert operation.id == record.pk
    assert (operation.key, operation.scope, operation.attempt) == ("order-7", "user:1", 1)
    assert operation.derived_key("charge") == f"{record.pk}:charge"
    assert operation.derived_key("charge") != operation.derived_key("refund")
    assert "order-7" not in operation.derived_key("charge")


def test_records_are_written_where_the_router_writes() -> None:
    assert models.records_database() == "default"


# Signals.


@pytest.fixture
def received():
    events: list[tuple[str, dict]] = []
    handlers = {}
    for name in (
        "operation_started",
        "operation_completed",
        "operation_replayed",
        "operation_conflict",
    ):

        def handler(sender, _name=name, **kwargs):
            events.append((_name, kwargs))

        handlers[name] = handler
        getattr(signals, name).connect(handler, weak=False)
    yield events
    for name, handler in handlers.items():
        getattr(signals, name).disconnect(handler)


def _names(events) -> list[str]:
    return [name for name, _ in events]


def test_signals_for_run_and_replay(received) -> None:
    run(Work())
    assert _names(received) == ["operation_started", "operation_completed"]
    started = received[0][1]
    assert (started["scope"], started["key"]) == ("s", "k1")
    assert isinstance(started["record"], IdempotencyRecord)
    received.clear()
    run(Work())
    assert _names(received) == ["operation_replayed"]


def test_signals_for_conflicts(received) -> None:
    run(Work())
    received.clear()
    run(Work(), intent=intent(fingerprint="g" * 64))
    assert _names(received) == ["operation_conflict"]
    assert received[0][1]["reason"] == "mismatch"
    IdempotencyRecordFactory(scope="s", key="k2", fingerprint="f" * 64)
    received.clear()
    run(Work(), intent=intent(key="k2"))
    assert _names(received) == ["operation_conflict"]
    assert received[0][1]["reason"] == "in_progress"


def test_no_completed_signal_for_a_failed_attempt(received) -> None:
    run(Work(result="failed"))
    assert "operation_completed" not in _names(received)


@pytest.mark.parametrize("mode", [engine.Mode.TWO_PHASE, engine.Mode.NON_ATOMIC])
def test_autocommit_off_is_refused_before_any_claim(monkeypatch, mode) -> None:
    """With AUTOCOMMIT off nothing would commit the claim: refuse (check W006 warns)."""
    monkeypatch.setattr(connections["default"], "get_autocommit", lambda: False)
    work = Work()
    with pytest.raises(RuntimeError, match="Autocommit is off"):
        engine.execute(intent(), policy(mode), work, store)
    assert work.calls == 0 and not IdempotencyRecord.objects.exists()


# The failure ladder: every mode and both runners (a callable, a ``once`` block) take
# the same one. A failure at each step, of each kind, must end in the same outcome and
# leave the same trace as every other way of running.

LOCKED = "database is locked"  # a lock conflict on every backend (database.is_lock_conflict)
LOST = "server closed the connection unexpectedly"


def _error(kind: str) -> BaseException:
    if kind == "lock":
        return OperationalError(LOCKED)
    if kind == "down":
        return OperationalError(LOST)
    if kind == "integrity":
        return IntegrityError("the work's data broke a constraint at commit")
    return KeyError("the work's own bug")


#: What each mode answers a failure at each step: (the caller gets, the record left).
#: "409": ``Conflict("lock")``; "503": ``StoreDown`` with the error; "raise": the error
#: itself propagates; "ran": the mode has no such step. The record: "-" none, "held" as
#: it was (a take-over acts on it), "unlocked" IN_PROGRESS with its lease ended so the
#: retry continues the same operation, "done" completed.
LADDER = [
    # step       error        two-phase         single            atomic=False
    ("claim",    "lock",      ("409", "-"),     ("409", "-"),     ("409", "-")),
    ("claim",    "down",      ("503", "-"),     ("503", "-"),     ("503", "-")),
    ("lock",     "lock",      ("409", "held"),  ("ran", "done"),  ("ran", "done")),
    ("lock",     "down",      ("503", "-"),     ("ran", "done"),  ("ran", "done")),
    ("work",     "lock",      ("409", "-"),     ("409", "-"),     ("409", "unlocked")),
    ("work",     "down",      ("raise", "-"),   ("raise", "-"),   ("raise", "unlocked")),
    ("work",     "bug",       ("raise", "-"),   ("raise", "-"),   ("raise", "unlocked")),
    ("finalize", "lock",      ("409", "-"),     ("409", "-"),     ("409", "unlocked")),
    ("finalize", "down",      ("503", "-"),     ("503", "-"),     ("503", "unlocked")),
    ("commit",   "lock",      ("409", "-"),     ("409", "-"),     ("ran", "done")),
    ("commit",   "down",      ("503", "-"),     ("503", "-"),     ("ran", "done")),
    ("commit",   "integrity", ("raise", "-"),   ("raise", "-"),   ("ran", "done")),
]  # fmt: skip
LADDER_CELLS = [
    pytest.param(mode, step, kind, *answer, id=f"{mode.name.lower()}-{step}-{kind}")
    for step, kind, *answers in LADDER
    for mode, answer in zip(MODES, answers)
]


def _raising(error: BaseException) -> Any:
    def action(operation: Operation | None) -> None:
        raise error

    return action


def _fail_at(step: str, error: BaseException, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make ``step`` fail once with ``error``; for the work, the action that raises it."""
    if step == "work":
        return _raising(error)
    owner: Any = connections["default"] if step == "commit" else IdempotencyRecordQuerySet
    original = getattr(owner, step)
    calls: list[int] = []

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, step, fail_once)
    return None


def _left() -> str:
    record = IdempotencyRecord.objects.first()
    if record is None:
        return "-"
    if record.status == Status.COMPLETED:
        return "done"
    return "held" if record.lease_is_live() else "unlocked"


@pytest.mark.parametrize(("mode", "step", "kind", "answer", "left"), LADDER_CELLS)
def test_every_mode_takes_the_one_failure_ladder(mode, step, kind, answer, left, monkeypatch):
    error = _error(kind)
    work = Work(action=_fail_at(step, error, monkeypatch))
    if answer == "raise":
        with pytest.raises(type(error)) as raised:
            run(work, mode)
        assert raised.value is error
    else:
        outcome = run(work, mode)
        assert {
            "ran": lambda: isinstance(outcome, Executed) and outcome.record is not None,
            "409": lambda: outcome == Conflict("lock"),
            "503": lambda: isinstance(outcome, StoreDown) and outcome.error is error,
        }[answer]()
    assert _left() == left
    kept = answer == "ran" or (mode is engine.Mode.NON_ATOMIC and work.calls)
    assert Order.objects.count() == (1 if kept else 0)  # a rolled-back attempt leaves none


@pytest.mark.parametrize(
    ("step", "kind", "answer", "left"),
    [
        pytest.param(step, kind, *single, id=f"{step}-{kind}")
        for step, kind, _, single, _ in LADDER
        if single[0] != "ran"
    ],
)
def test_once_takes_the_same_ladder(step, kind, answer, left, monkeypatch) -> None:
    """``once`` runs its block between the same steps: what the engine answers for a
    callable it raises as ``Busy`` or ``Unavailable``, and an error it lets a callable
    raise it lets the block raise."""
    from django_idempotency import once as module

    error = _error(kind)
    action = _fail_at(step, error, monkeypatch)
    expected = {"409": module.Busy, "503": module.Unavailable}.get(answer, type(error))
    with pytest.raises(expected) as raised, module.once("k1", scope="s") as block:
        assert block.first
        Order.objects.create(reference="k1:1")
        if action is not None:
            action(None)
        block.result = "done"
    if answer == "raise":
        assert raised.value is error
    elif answer == "503":
        assert raised.value.__cause__ is error
    else:
        assert raised.value.reason == "lock"
    assert _left() == left
    assert not Order.objects.exists()


@pytest.mark.parametrize("mode", MODES)
def test_signals_name_the_record_only_when_others_could_see_it(mode, received) -> None:
    """A lock conflict after the claim names the record it claimed, unless that claim
    shared the work's transaction and rolled back with it."""
    received.clear()
    run(Work(action=_raising(_error("lock"))), mode)
    conflict = dict(received)["operation_conflict"]
    assert conflict["reason"] == "lock"
    if mode is engine.Mode.SINGLE_TRANSACTION:
        assert conflict["record"] is None
    else:
        assert conflict["record"].pk == dict(received)["operation_started"]["record"].pk


def test_a_two_phase_guard_inside_a_transaction_claims_in_it() -> None:
    """The claim cannot commit first there, so it commits with the work (or not at all)."""
    with pytest.raises(KeyError), transaction.atomic():
        run(Work(action=_raising(_error("bug"))))
    assert not IdempotencyRecord.objects.exists() and not Order.objects.exists()
    with transaction.atomic():
        outcome = run(Work())
        assert isinstance(outcome, Executed) and outcome.record is not None
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED


def test_an_atomic_false_guard_inside_a_transaction_is_refused() -> None:
    work = Work()
    with pytest.raises(RuntimeError, match="E014"), transaction.atomic():
        run(work, engine.Mode.NON_ATOMIC)
    assert work.calls == 0 and not IdempotencyRecord.objects.exists()
