"""``engine.execute`` without HTTP: the state machine of DESIGN.md section 3, per mode.

Real commits (``transaction=True``): the two-phase claim commits on its own, and a
release after a rollback must really delete.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from django_idempotency import engine, signals
from django_idempotency.models import IdempotencyRecord, Status
from tests.factories import IdempotencyRecordFactory
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

MODES = [engine.Mode.TWO_PHASE, engine.Mode.SINGLE_TRANSACTION, engine.Mode.NON_ATOMIC]
TRANSACTIONAL = [engine.Mode.TWO_PHASE, engine.Mode.SINGLE_TRANSACTION]


def intent(key: str = "k1", fingerprint: str = "f" * 64, scope: str = "s") -> engine.Intent:
    return engine.Intent(scope=scope, key=key, fingerprint=fingerprint, method="POST", route="/x/")


def policy(mode: engine.Mode = engine.Mode.TWO_PHASE, **kwargs: Any) -> engine.Policy:
    values: dict[str, Any] = {"lease": timedelta(seconds=90), "ttl": timedelta(hours=1)}
    values.update(kwargs)
    return engine.Policy(mode=mode, **values)


def store(value: Any) -> engine.Stored | None:
    """The capture function: store ``value`` unless the work says it failed."""
    if value == "failed":
        return None
    return engine.Stored(status=201, headers={"X-Value": str(value)}, body=str(value).encode())


class Work:
    """Work that writes an Order and counts its calls."""

    def __init__(self, result: Any = "done", action: Any = None) -> None:
        self.calls = 0
        self.result = result
        self.action = action
        self.operations: list[engine.Operation] = []

    def __call__(self, operation: engine.Operation) -> Any:
        self.calls += 1
        self.operations.append(operation)
        Order.objects.create(reference=f"{operation.key}:{operation.attempt}")
        if self.action is not None:
            self.action(operation)
        return self.result


def run(work: Work, mode=engine.Mode.TWO_PHASE, **kwargs: Any) -> Any:
    return engine.execute(kwargs.pop("intent", intent()), policy(mode, **kwargs), work, store)


@pytest.mark.parametrize("mode", MODES)
def test_first_run_stores_the_result(mode) -> None:
    work = Work()
    outcome = run(work, mode)
    assert isinstance(outcome, engine.Executed)
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
    assert isinstance(outcome, engine.Replay)
    assert outcome.record.pk == first.record.pk
    assert work.calls == 0
    assert Order.objects.count() == 1


@pytest.mark.parametrize("mode", MODES)
def test_other_fingerprint_is_a_mismatch(mode) -> None:
    run(Work(), mode)
    work = Work()
    outcome = run(work, mode, intent=intent(fingerprint="g" * 64))
    assert isinstance(outcome, engine.Mismatch)
    assert work.calls == 0


@pytest.mark.parametrize("mode", MODES)
def test_other_scope_is_another_operation(mode) -> None:
    run(Work(), mode)
    outcome = run(Work(), mode, intent=intent(scope="other"))
    assert isinstance(outcome, engine.Executed)
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
    assert isinstance(outcome, engine.InProgress)
    assert outcome.record.pk == record.pk
    assert 1 <= outcome.retry_after <= 42
    assert work.calls == 0


@pytest.mark.parametrize("mode", MODES)
def test_expired_record_is_discarded(mode) -> None:
    old = IdempotencyRecordFactory(expired=True, scope="s", key="k1", fingerprint="x" * 64)
    outcome = run(Work(), mode)
    assert isinstance(outcome, engine.Executed)
    record = IdempotencyRecord.objects.get()
    assert record.pk != old.pk
    assert record.fingerprint == "f" * 64


@pytest.mark.parametrize("mode", MODES)
def test_dead_lease_is_taken_over(mode) -> None:
    stuck = IdempotencyRecordFactory(
        stuck=True, scope="s", key="k1", fingerprint="f" * 64, recovery_point="charged"
    )
    work = Work()
    outcome = run(work, mode)
    assert isinstance(outcome, engine.Executed)
    operation = work.operations[0]
    assert operation.id == stuck.pk
    assert operation.attempt == 2
    assert operation.recovery_point == "charged"
    record = IdempotencyRecord.objects.get()
    assert (record.pk, record.attempts, record.status) == (stuck.pk, 2, Status.COMPLETED)
    assert record.lease_token != stuck.lease_token


@pytest.mark.parametrize("mode", TRANSACTIONAL)
def test_failed_capture_rolls_back_and_releases(mode) -> None:
    outcome = run(Work(result="failed"), mode)
    assert isinstance(outcome, engine.Executed)
    assert outcome.value == "failed"
    assert outcome.record is None
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0
    assert isinstance(run(Work(), mode), engine.Executed)
    assert Order.objects.count() == 1


@pytest.mark.parametrize("mode", TRANSACTIONAL)
def test_exception_rolls_back_releases_and_propagates(mode) -> None:
    def explode(operation: engine.Operation) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        run(Work(action=explode), mode)
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


def test_non_atomic_failure_keeps_the_operation_for_the_retry() -> None:
    """Work outside the database may have happened: the retry continues the same
    operation (same id, same derived keys) from its recovery point."""

    def charge_then_crash(operation: engine.Operation) -> None:
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
    assert isinstance(outcome, engine.Executed)
    assert retry.operations[0].id == first.operations[0].id
    assert retry.operations[0].attempt == 2
    assert retry.operations[0].recovery_point == "charged"
    assert retry.operations[0].derived_key("charge") == first.operations[0].derived_key("charge")
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED


def test_non_atomic_failed_capture_keeps_the_operation() -> None:
    first = Work(result="failed")
    outcome = run(first, engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, engine.Executed)
    assert outcome.record is None
    record = IdempotencyRecord.objects.get()
    assert record.status == Status.IN_PROGRESS
    assert not record.lease_is_live()
    retry = Work()
    assert isinstance(run(retry, engine.Mode.NON_ATOMIC), engine.Executed)
    assert retry.operations[0].id == first.operations[0].id


def _steal_lease(operation: engine.Operation) -> None:
    IdempotencyRecord.objects.filter(pk=operation.id).update(lease_token=uuid.uuid4())


def test_two_phase_fencing_rolls_back_when_the_lease_is_lost() -> None:
    outcome = run(Work(action=_steal_lease))
    assert isinstance(outcome, engine.Busy)
    assert outcome.reason == "lease_lost"
    assert outcome.retry_after >= 1
    assert Order.objects.count() == 0  # nothing committed twice
    assert not IdempotencyRecord.objects.filter(status=Status.COMPLETED).exists()


def test_non_atomic_finalize_is_fenced_too() -> None:
    outcome = run(Work(action=_steal_lease), engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, engine.Busy)
    assert outcome.reason == "lease_lost"
    assert IdempotencyRecord.objects.get().status == Status.IN_PROGRESS


def test_checkpoint_after_losing_the_lease_stops_the_work() -> None:
    reached = []

    def steal_then_checkpoint(operation: engine.Operation) -> None:
        _steal_lease(operation)
        operation.checkpoint("step-2")
        reached.append(True)

    outcome = run(Work(action=steal_then_checkpoint), engine.Mode.NON_ATOMIC)
    assert isinstance(outcome, engine.Busy)
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
    assert engine.records_database() == "default"


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
    from django.db import connection

    monkeypatch.setattr(connection, "get_autocommit", lambda: False)
    work = Work()
    with pytest.raises(RuntimeError, match="Autocommit is off"):
        engine.execute(intent(), policy(mode), work, store)
    assert work.calls == 0 and not IdempotencyRecord.objects.exists()
