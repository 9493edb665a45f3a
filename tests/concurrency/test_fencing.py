"""Leases and fencing: an attempt whose lease was taken over never commits, and a
crashed attempt is taken over exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_idempotency import signals
from django_idempotency.models import IdempotencyRecord
from tests.concurrency.outcomes import assert_conflict
from tests.concurrency.threads import Worker, errors, send, together
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Charge, Order
from tests.testapp.race_views import Hold

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

THREADS = 12


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4()}"


def expire_lease(key: str) -> None:
    """What time does to a lease, without waiting for it (the record is not row-locked)."""
    updated = IdempotencyRecord.objects.filter(key=key).update(
        locked_until=timezone.now() - timedelta(seconds=1)
    )
    assert updated == 1


def wait_for_lease_to_pass(key: str) -> None:
    """Real time, for a record another transaction holds (no UPDATE could get in)."""
    record = IdempotencyRecord.objects.get(key=key)
    assert record.locked_until is not None
    while timezone.now() <= record.locked_until:
        time.sleep(0.05)


def finished(workers: list[Worker], count: int, timeout: float = 15) -> list[Worker]:
    """Wait until ``count`` of ``workers`` have answered; those are returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [worker for worker in workers if worker.done()]
        if len(done) >= count:
            return done
        time.sleep(0.02)
    raise AssertionError(f"only {len(done)} of {count} answered while the first was held")


@pytest.fixture
def after_claim() -> Iterator[Callable[[Callable[[], None]], None]]:
    """``after_claim(step)``: the first attempt 1 to claim runs ``step`` in its own thread,
    between its committed claim and its execute transaction."""
    steps: list[Callable[[], None]] = []

    def receiver(sender: Any, record: Any, **kwargs: Any) -> None:
        if steps and record.attempts == 1:
            steps.pop()()

    signals.operation_started.connect(receiver, weak=False)
    yield steps.append
    steps.clear()
    signals.operation_started.disconnect(receiver)


@pytest.fixture
def stall_after_claim(after_claim: Callable[[Callable[[], None]], None]) -> Iterator[Hold]:
    """Holds attempt 1 after its claim, the way a paused worker (GC, swapped out, slow
    network) would, until the test releases it."""
    hold = Hold()
    after_claim(hold.block)
    yield hold
    hold.release()


@pytest.mark.parametrize("checkpoint", [False, True], ids=["finalize", "checkpoint"])
def test_non_atomic_attempt_taken_over_stores_nothing(
    checkpoint: bool, race: dict[str, Any]
) -> None:
    """atomic=False: attempt 1 outlives its lease; attempt 2 takes over and completes;
    attempt 1's checkpoint or finalize matches no row: 409, nothing of its own stored."""
    race["checkpoint"] = checkpoint
    hold = race["before_charge"] = Hold()
    key = new_key("fence-charge")
    data = {"reference": key, "amount": 500}
    first = Worker(lambda: send("/race/charge/", key, data))
    hold.wait_entered()
    expire_lease(key)

    second = send("/race/charge/", key, data)
    assert (second.status, second.json["attempt"]) == (201, 2)
    hold.release()
    late = first.result()

    assert_conflict(late, "idempotency-lease-lost")
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.status, record.attempts) == (IdempotencyRecord.Status.COMPLETED, 2)
    assert bytes(record.response_body) == second.body
    assert Charge.objects.count() == 1
    assert race["provider_calls"] == [second.json["operation"] + ":charge"] * 2
    assert send("/race/charge/", key, data).body == second.body


def test_two_phase_attempt_stalled_before_execute_never_writes(
    stall_after_claim: Hold,
) -> None:
    """Attempt 1 claims, stalls past its lease before its execute transaction; attempt 2
    takes over and completes; attempt 1's fenced row lock finds nothing: 409, no write."""
    key = new_key("fence-stall")
    first = Worker(lambda: send("/race/two-phase/", key))
    stall_after_claim.wait_entered()
    expire_lease(key)

    second = send("/race/two-phase/", key)
    assert second.status == 201 and not second.replayed
    stall_after_claim.release()
    assert_conflict(first.result(), "idempotency-lease-lost")

    assert Order.objects.filter(reference=key).count() == 1
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.status, record.attempts) == (IdempotencyRecord.Status.COMPLETED, 2)
    assert bytes(record.response_body) == second.body


def test_take_over_of_a_row_locked_attempt_is_refused_at_once(
    race: dict[str, Any], row_locks: None
) -> None:
    """Attempt 1 is inside its execute transaction (record row-locked) when its lease
    runs out: a retry's take-over gets 409 at once (NOWAIT), not a wait and not a 500.
    Attempt 1 still owns the lease, so it completes."""
    hold = race["inside"] = Hold()
    key = new_key("fence-nowait")
    first = Worker(lambda: send("/race/held/two-phase/", key))
    hold.wait_entered()
    wait_for_lease_to_pass(key)

    retries = together(4, lambda _i: send("/race/held/two-phase/", key))
    for reply in retries:
        assert_conflict(reply, "idempotency-lock-conflict")
    hold.release()
    done = first.result()
    assert (done.status, done.json["attempt"]) == (201, 1)
    assert send("/race/held/two-phase/", key).body == done.body
    assert Order.objects.filter(reference=key).count() == 1
    assert IdempotencyRecord.objects.get(key=key).attempts == 1


def test_non_atomic_crash_after_the_external_call_is_resumed(
    race: dict[str, Any], vendor: str
) -> None:
    """The view charges, then crashes; the retry takes over the same operation id, sends
    the same derived key (the provider keeps one charge) and stores its answer once.
    Many retries race for it, except on in-memory SQLite, whose shared-cache locks
    refuse at once (409) instead of waiting."""
    race["crash"] = True
    key = new_key("crash")
    data = {"reference": key, "amount": 700}
    with pytest.raises(RuntimeError, match="crashed after the external call"):
        send("/race/charge/", key, data)
    crashed = IdempotencyRecord.objects.get(key=key)
    assert crashed.status == IdempotencyRecord.Status.IN_PROGRESS
    assert not crashed.lease_is_live()

    count = 1 if vendor == "sqlite" else THREADS
    retries = together(count, lambda _i: send("/race/charge/", key, data))
    assert errors(retries) == []
    executed = [reply for reply in retries if reply.status == 201 and not reply.replayed]
    assert len(executed) == 1, retries
    answer = executed[0]
    assert answer.json == {
        "charge": Charge.objects.get().pk,
        "attempt": 2,
        "operation": str(crashed.pk),
    }
    for reply in retries:
        if reply.status == 409:
            assert_conflict(reply)
        else:
            assert (reply.status, reply.body) == (201, answer.body)
    assert race["provider_calls"] == [f"{crashed.pk}:charge"] * 2
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.pk, record.attempts, record.status) == (crashed.pk, 2, "completed")
    assert bytes(record.response_body) == answer.body


@pytest.mark.parametrize("path", ["/race/held/two-phase/", "/race/charge/"])
def test_many_retries_of_a_crashed_attempt_take_it_over_once(
    path: str, race: dict[str, Any], row_locks: None
) -> None:
    """A stuck record (its worker died, the lease ran out); many retries arrive at
    once: exactly one takes over, every other one gets 409 while it runs."""
    for _round in range(5):
        key = new_key("stuck")
        data = {"reference": key, "amount": 1}
        stuck = IdempotencyRecordFactory(
            stuck=True, key=key, route=path, fingerprint=request_fingerprint(path=path, data=data)
        )
        hold = Hold()
        race["inside"] = race["before_charge"] = hold
        workers = [Worker(lambda: send(path, key, data)) for _ in range(THREADS)]
        hold.wait_entered()
        others = finished(workers, THREADS - 1)
        for worker in others:
            assert_conflict(worker.result())
        hold.release()
        race.pop("inside", None)
        race.pop("before_charge", None)
        [winner] = [worker.result() for worker in workers if worker not in others]
        assert winner.status == 201 and winner.json["attempt"] == 2, winner
        record = IdempotencyRecord.objects.get(key=key)
        assert (record.pk, record.attempts, record.status) == (stuck.pk, 2, "completed")
        if path == "/race/charge/":
            assert Charge.objects.filter(derived_key=f"{stuck.pk}:charge").count() == 1
        else:
            assert Order.objects.filter(reference=key).count() == 1


def test_single_transaction_retries_of_a_crashed_attempt_run_once(
    race: dict[str, Any], row_locks: None
) -> None:
    """single_transaction: the one that takes over holds the row until it commits; the
    others wait and replay, or get 409 (NOWAIT on the take-over); one business row."""
    race["sleep"] = 0.2
    path = "/race/single/"
    for _round in range(3):
        key = new_key("stuck-single")
        data = {"reference": key}
        IdempotencyRecordFactory(
            stuck=True, key=key, route=path, fingerprint=request_fingerprint(path=path, data=data)
        )
        results = together(THREADS, lambda _i, key=key, data=data: send(path, key, data))
        assert errors(results) == []
        assert sorted({reply.status for reply in results}) in ([201], [201, 409]), results
        assert len([r for r in results if r.status == 201 and not r.replayed]) == 1
        assert Order.objects.filter(reference=key).count() == 1
        assert IdempotencyRecord.objects.get(key=key).attempts == 2


def test_stale_attempt_waits_for_the_taker_then_gets_409(
    race: dict[str, Any], stall_after_claim: Hold, row_locks: None
) -> None:
    """Attempt 1 resumes while attempt 2 (which took over) is inside its transaction:
    attempt 1's row lock waits for it, then re-reads the row, finds another lease
    token, and stops: 409, no write of its own."""
    path = "/race/held/two-phase/"
    inside = race["inside"] = Hold()
    key = new_key("fence-wait")
    first = Worker(lambda: send(path, key))
    stall_after_claim.wait_entered()
    expire_lease(key)
    second = Worker(lambda: send(path, key))
    inside.wait_entered()  # attempt 2 holds the record's row lock

    stall_after_claim.release()
    inside.release()

    taken = second.result()
    assert (taken.status, taken.json["attempt"]) == (201, 2)
    assert_conflict(first.result(), "idempotency-lease-lost")
    assert Order.objects.filter(reference=key).count() == 1
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.attempts, bytes(record.response_body)) == (2, taken.body)


def test_record_lock_timeout_before_execute_is_a_409_left_to_the_holder(
    after_claim: Callable[[Callable[[], None]], None], vendor: str, row_locks: None
) -> None:
    """Attempt 1's own row lock times out (a retry is taking over its lease and holds
    the row): 409, not a 500, and the record is left alone for whoever holds it."""
    key = new_key("fence-locked")
    ready, proceed = threading.Event(), threading.Event()

    def bounded_wait_then_go() -> None:
        with connection.cursor() as cursor:  # this request's connection only
            if vendor == "postgresql":
                cursor.execute("SET lock_timeout = '100ms'")
            else:
                cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
        ready.set()
        assert proceed.wait(15)

    after_claim(bounded_wait_then_go)
    first = Worker(lambda: send("/race/two-phase/", key))
    assert ready.wait(15)
    holding, release = threading.Event(), threading.Event()

    def take_the_row() -> None:
        with transaction.atomic():
            IdempotencyRecord.objects.select_for_update().get(key=key)
            holding.set()
            release.wait(15)

    holder = Worker(take_the_row)
    assert holding.wait(15)
    proceed.set()
    refused = first.result()
    release.set()
    assert holder.result() is None

    assert_conflict(refused, "idempotency-lock-conflict")
    record = IdempotencyRecord.objects.get(key=key)
    assert (record.status, record.attempts) == (IdempotencyRecord.Status.IN_PROGRESS, 1)
    assert Order.objects.filter(reference=key).count() == 0
    expire_lease(key)
    retry = send("/race/two-phase/", key)
    assert retry.status == 201
    assert IdempotencyRecord.objects.get(key=key).attempts == 2


def test_store_lost_between_claim_and_execute_is_a_503(
    after_claim: Callable[[Callable[[], None]], None],
) -> None:
    """The database connection dies after the claim: 503, not a 500; the claim stays,
    and a retry takes it over once its lease has run out."""
    key = new_key("store-lost")
    after_claim(lambda: connection.connection.close())

    lost = send_in_thread("/race/two-phase/", key)

    assert lost.status == 503, lost
    assert lost.problem["type"].endswith("idempotency-unavailable")
    assert lost.retry_after is not None
    assert Order.objects.filter(reference=key).count() == 0
    assert IdempotencyRecord.objects.get(key=key).status == IdempotencyRecord.Status.IN_PROGRESS
    expire_lease(key)
    retry = send("/race/two-phase/", key)
    assert retry.status == 201
    assert Order.objects.filter(reference=key).count() == 1


def send_in_thread(path: str, key: str) -> Any:
    """A request on a connection of its own (the test may break that connection)."""
    return Worker(lambda: send(path, key)).result()


@pytest.mark.parametrize("path", ["/race/two-phase/", "/race/non-atomic/"])
def test_claim_refuses_to_run_when_nothing_would_commit_it(path: str) -> None:
    """Autocommit off and no atomic block: the claim would sit uncommitted (duplicates
    would wait instead of getting 409, and the answer would be lost with the
    connection), so the engine refuses loudly instead of answering 201."""
    key = new_key("no-autocommit")

    def without_autocommit() -> Any:
        transaction.set_autocommit(False)
        try:
            return send(path, key)
        finally:
            transaction.rollback()
            transaction.set_autocommit(True)

    refused = Worker(without_autocommit).result()
    assert isinstance(refused, RuntimeError), refused
    assert "Autocommit is off" in str(refused)
    assert not IdempotencyRecord.objects.filter(key=key).exists()
    assert Order.objects.filter(reference=key).count() == 0
