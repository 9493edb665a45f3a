"""Take-over by real threads: a crashed attempt (its lease ended) is taken over exactly
once, however many retries race for it, and never while its worker still holds the row."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.utils import timezone

from django_idempotency.models import IdempotencyRecord
from tests.concurrency.outcomes import assert_conflict
from tests.concurrency.threads import Worker, errors, new_key, send, together
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Charge, Order
from tests.testapp.race_views import Hold

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

THREADS = 12


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
