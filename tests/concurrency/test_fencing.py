"""Leases and fencing: an attempt whose lease was taken over never commits, and an
attempt cut off between its claim and its work leaves the claim to a retry. The
take-over itself, by real threads, is in tests/concurrency/test_take_over.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_idempotency import signals
from django_idempotency.conf import conf
from django_idempotency.models import IdempotencyRecord
from tests import pooler
from tests.concurrency.outcomes import assert_conflict
from tests.concurrency.threads import Worker, new_key, send
from tests.testapp.models import Charge, Order
from tests.testapp.race_views import Hold

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]


def expire_lease(key: str) -> None:
    """What time does to a lease, without waiting for it (the record is not row-locked)."""
    updated = IdempotencyRecord.objects.filter(key=key).update(
        locked_until=timezone.now() - timedelta(seconds=1)
    )
    assert updated == 1


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
    if pooler.TRANSACTION_POOLING:
        pytest.skip("bounds attempt 1's wait by a SET on its session: a pooler does not keep it")
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
    """The database connection dies after the claim: 503, not a 500. The claim is
    released on a fresh connection, so the retry that ``Retry-After`` invites runs at
    once instead of waiting for the lease. An in-memory SQLite database has no second
    connection: the claim stays, and ``Retry-After`` says how long it blocks the key."""
    key = new_key("store-lost")
    after_claim(lambda: connection.connection.close())

    lost = send_in_thread("/race/two-phase/", key)

    assert lost.status == 503, lost
    assert lost.problem["type"].endswith("idempotency-unavailable")
    assert Order.objects.filter(reference=key).count() == 0
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        assert lost.retry_after == str(int(conf.LEASE.total_seconds()))
        assert IdempotencyRecord.objects.get(key=key).status == "in_progress"
        expire_lease(key)
    else:
        assert lost.retry_after == "5"
        assert not IdempotencyRecord.objects.filter(key=key).exists()
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
