"""Deadlocks and lock timeouts in a guarded view's own writes: 409 with Retry-After,
never a 500, nothing committed, and the key free for the retry.

PostgreSQL reports 40P01 (deadlock) and 55P03 (NOWAIT, lock_timeout); MariaDB 1213
(deadlock) and 1205 (lock wait timeout, and NOWAIT).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import transaction

from django_idempotency.models import IdempotencyRecord
from tests.concurrency.outcomes import assert_conflict
from tests.concurrency.threads import Worker, new_key, send, together
from tests.testapp.models import Order

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("mode", ["two-phase", "single"])
def test_a_deadlock_victim_runs_again_inside_its_request(
    mode: str, race: dict[str, Any], row_locks: None
) -> None:
    """Nothing of the victim committed and nothing left the database: the guard runs it
    again (``CONFLICT_RETRIES``) instead of telling the client to."""
    path = f"/race/swap/{mode}/"
    left, right = Order.objects.create(reference="left"), Order.objects.create(reference="right")
    keys = [new_key("swap-a"), new_key("swap-b")]
    bodies = [{"first": left.pk, "second": right.pk}, {"first": right.pk, "second": left.pk}]
    race["barrier"] = threading.Barrier(2, action=lambda: race.pop("barrier", None))

    results = together(2, lambda i: send(path, keys[i], bodies[i]))

    assert [reply.status for reply in results] == [200, 200], results
    assert sorted(Order.objects.values_list("amount", flat=True)) == [2, 2]
    assert IdempotencyRecord.objects.filter(key__in=keys, status="completed").count() == 2


@pytest.mark.parametrize("mode", ["two-phase", "single"])
def test_without_retries_a_deadlock_is_a_409_and_the_key_is_free(
    mode: str, race: dict[str, Any], row_locks: None, settings: Any
) -> None:
    settings.IDEMPOTENCY = {"CONFLICT_RETRIES": 0}
    path = f"/race/swap/{mode}/"
    left, right = Order.objects.create(reference="left"), Order.objects.create(reference="right")
    keys = [new_key("swap-a"), new_key("swap-b")]
    bodies = [{"first": left.pk, "second": right.pk}, {"first": right.pk, "second": left.pk}]
    race["barrier"] = threading.Barrier(2)

    results = together(2, lambda i: send(path, keys[i], bodies[i]))

    assert sorted(reply.status for reply in results) == [200, 409], results
    victim = next(i for i, reply in enumerate(results) if reply.status == 409)
    assert_conflict(results[victim], "idempotency-lock-conflict")
    assert not IdempotencyRecord.objects.filter(key=keys[victim]).exists()
    assert sorted(Order.objects.values_list("amount", flat=True)) == [1, 1]

    race.pop("barrier")
    retry = send(path, keys[victim], bodies[victim])
    assert retry.status == 200 and not retry.replayed
    assert sorted(Order.objects.values_list("amount", flat=True)) == [2, 2]


@pytest.fixture
def locked_order(row_locks: None) -> Iterator[tuple[Order, Callable[[], None]]]:
    """An order row-locked by another connection until ``release()`` returns."""
    order = Order.objects.create(reference="held")
    locked, gate = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            Order.objects.select_for_update().get(pk=order.pk)
            locked.set()
            gate.wait(15)

    holder = Worker(hold)

    def release() -> None:
        gate.set()
        assert holder.result() is None  # committed: the lock is gone

    assert locked.wait(15)
    yield order, release
    release()


@pytest.mark.parametrize("how", ["nowait", "timeout"])
@pytest.mark.parametrize("mode", ["two-phase", "single"])
def test_lock_timeout_is_a_409_and_the_key_is_free(
    mode: str, how: str, locked_order: tuple[Order, Callable[[], None]]
) -> None:
    order, release = locked_order
    witness = Order.objects.create(reference="witness")
    key = new_key(f"grab-{how}")
    body = {"order": order.pk, "how": how, "witness": witness.pk}

    refused = send(f"/race/grab/{mode}/", key, body)

    assert_conflict(refused, "idempotency-lock-conflict")
    assert not IdempotencyRecord.objects.filter(key=key).exists()
    witness.refresh_from_db()
    assert witness.amount == 0  # the view's earlier write was rolled back
    release()
    retry = send(f"/race/grab/{mode}/", key, body)
    assert retry.status == 200 and not retry.replayed
    witness.refresh_from_db()
    assert witness.amount == 1


@pytest.mark.parametrize("how", ["nowait", "timeout"])
def test_non_atomic_view_lock_conflict_is_a_409_and_the_retry_takes_over(
    how: str, locked_order: tuple[Order, Callable[[], None]]
) -> None:
    """atomic=False: the record is kept (the view may have reached outside the database)
    with its lease ended, so the retry resumes the same operation."""
    order, release = locked_order
    witness = Order.objects.create(reference="witness")
    key = new_key(f"grab-na-{how}")
    body = {"order": order.pk, "how": how, "witness": witness.pk}

    refused = send("/race/grab/non-atomic/", key, body)

    assert_conflict(refused, "idempotency-lock-conflict")
    record = IdempotencyRecord.objects.get(key=key)
    assert record.status == IdempotencyRecord.Status.IN_PROGRESS
    assert not record.lease_is_live()
    release()
    retry = send("/race/grab/non-atomic/", key, body)
    assert retry.status == 200
    record.refresh_from_db()
    assert (record.status, record.attempts) == (IdempotencyRecord.Status.COMPLETED, 2)
