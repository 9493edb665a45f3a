"""Concurrent duplicates of one key: the view runs once, everyone else gets 409 or the
stored answer, never a 500 and never a second business row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from django_idempotency.models import IdempotencyRecord
from tests.concurrency.outcomes import assert_conflict, assert_never_twice, assert_ran_once
from tests.concurrency.threads import Worker, errors, new_key, send, together
from tests.testapp.models import Order
from tests.testapp.race_views import Hold

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]

THREADS = 12
ROUNDS = 4


def skip_non_atomic_on_sqlite(path: str, vendor: str) -> None:
    if vendor == "sqlite" and "non-atomic" in path:
        pytest.skip(
            "in-memory SQLite (shared cache) fails a lock wait at once, even the claimer's "
            "finalize: the retry then redoes an atomic=False view that is not idempotent "
            "by itself (no derived key), as that mode's contract allows"
        )


def check_round(results: list[Any], key: str, path: str, vendor: str) -> None:
    """Exactly one execution on PostgreSQL and MariaDB; SQLite's weaker promise there."""
    if vendor == "sqlite":
        assert_never_twice(results, key, retry=lambda: send(path, key))
    else:
        assert_ran_once(results, key)


@pytest.mark.parametrize("path", ["/race/two-phase/", "/race/non-atomic/"])
def test_duplicates_of_a_slow_view_run_it_once(
    path: str, race: dict[str, object], vendor: str
) -> None:
    skip_non_atomic_on_sqlite(path, vendor)
    race["sleep"] = 0.25
    for _round in range(ROUNDS):
        key = new_key("slow")
        results = together(THREADS, lambda _i, key=key: send(path, key))
        check_round(results, key, path, vendor)
        late = send(path, key)  # a late retry replays the stored answer
        assert (late.status, late.replayed) == (201, True)
        record = IdempotencyRecord.objects.get(key=key)
        assert late.body == bytes(record.response_body)


def test_duplicates_are_answered_while_the_first_still_runs(
    race: dict[str, object], row_locks: None
) -> None:
    """Two-phase: the claim commits first, so duplicates get 409 without waiting
    (on SQLite the first's write transaction locks out every other writer)."""
    hold = race["inside"] = Hold()
    key = new_key("early")
    first = Worker(lambda: send("/race/held/two-phase/", key))
    hold.wait_entered()
    results = together(THREADS - 1, lambda _i: send("/race/held/two-phase/", key))
    for reply in results:
        assert_conflict(reply, "idempotency-request-in-progress")
    hold.release()
    assert first.result().status == 201
    assert Order.objects.filter(reference=key).count() == 1


def test_single_transaction_duplicates_wait_then_replay(
    race: dict[str, object], vendor: str
) -> None:
    """Duplicates wait on the unique index and replay; MariaDB may refuse some with a
    deadlock on the duplicate-key S-lock, which must be a 409."""
    race["sleep"] = 0.25
    for _round in range(ROUNDS):
        key = new_key("single")
        results = together(THREADS, lambda _i, key=key: send("/race/single/", key))
        check_round(results, key, "/race/single/", vendor)


@pytest.mark.parametrize("path", ["/race/two-phase/", "/race/single/", "/race/non-atomic/"])
def test_duplicates_released_together_run_once(path: str, vendor: str) -> None:
    """No sleep: every thread reaches the claim at the same instant, many times."""
    skip_non_atomic_on_sqlite(path, vendor)
    for _round in range(10):
        key = new_key("burst")
        results = together(THREADS, lambda _i, key=key: send(path, key))
        check_round(results, key, path, vendor)


@pytest.mark.parametrize(
    "path", ["/race/meet/two-phase/", "/race/meet/single/", "/race/meet/non-atomic/"]
)
def test_different_keys_do_not_block_each_other(
    path: str, race: dict[str, object], row_locks: None
) -> None:
    """Both requests must be inside their transactions at once to pass the barrier (once:
    an attempt run again after a serialization failure, at SERIALIZABLE, finds none)."""
    for _round in range(3):
        race["barrier"] = threading.Barrier(2, action=lambda: race.pop("barrier", None))
        keys = [new_key("left"), new_key("right")]
        results = together(2, lambda i, keys=keys: send(path, keys[i]))
        assert [reply.status for reply in results] == [201, 201], results
        for key in keys:
            assert Order.objects.filter(reference=key).count() == 1
    assert IdempotencyRecord.objects.filter(status="completed").count() == 6


def test_single_transaction_waiters_run_it_when_the_first_fails(
    race: dict[str, object], row_locks: None
) -> None:
    """The first attempt answers 502 and rolls back while duplicates wait on the unique
    index: one waiter runs it, the rest replay (or get 409: on MariaDB the waiters'
    duplicate-key S-locks deadlock once the X-lock goes away)."""
    race["sleep"] = 0.2
    for _round in range(3):
        race["fail"] = True
        key = new_key("first-fails")
        results = together(THREADS, lambda _i, key=key: send("/race/first-fails/single/", key))
        assert errors(results) == []
        failed = [reply for reply in results if reply.status == 502]
        assert len(failed) == 1, results
        assert_ran_once([reply for reply in results if reply.status != 502], key)


def test_two_phase_duplicates_of_a_failed_attempt_retry_later(
    race: dict[str, object], row_locks: None
) -> None:
    """Two-phase: duplicates got 409 while the first ran; it failed and released the key,
    so nothing ran twice and the next retry runs it."""
    race["sleep"] = 0.2
    race["fail"] = True
    key = new_key("first-fails")
    results = together(THREADS, lambda _i: send("/race/first-fails/two-phase/", key))
    assert sorted(reply.status for reply in results) == [409] * (THREADS - 1) + [502], results
    assert Order.objects.filter(reference=key).count() == 0
    assert not IdempotencyRecord.objects.filter(key=key).exists()
    assert send("/race/first-fails/two-phase/", key).status == 201
    assert Order.objects.filter(reference=key).count() == 1


@pytest.fixture
def repeatable_read(vendor: str) -> Iterator[None]:
    """Every new connection in REPEATABLE READ (MySQL's own default, which a project may
    keep with ``OPTIONS['isolation_level']``; Django defaults to READ COMMITTED)."""
    if vendor == "postgresql":
        from psycopg import IsolationLevel

        level: object = IsolationLevel.REPEATABLE_READ
    elif vendor == "mysql":
        level = "repeatable read"
    else:
        pytest.skip("SQLite transactions are serializable")
    options = connection.settings_dict["OPTIONS"]
    saved = dict(options)
    options["isolation_level"] = level
    assert Worker(current_isolation).result() == "repeatable read"
    yield
    options.clear()
    options.update(saved)


@pytest.mark.parametrize("path", ["/race/two-phase/", "/race/single/", "/race/non-atomic/"])
def test_duplicates_run_once_under_repeatable_read(
    path: str, race: dict[str, object], repeatable_read: None
) -> None:
    for sleep in (0.0, 0.0, 0.2):
        race["sleep"] = sleep
        key = new_key("rr")
        results = together(THREADS, lambda _i, key=key: send(path, key))
        assert_ran_once(results, key)


def current_isolation() -> str:
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW transaction_isolation")
        else:
            cursor.execute("SELECT @@tx_isolation")
        return str(cursor.fetchone()[0]).lower().replace("-", " ")


def test_single_transaction_duplicate_waits_no_longer_than_its_bound(
    race: dict[str, object], row_locks: None
) -> None:
    """A duplicate waits on the unique index for at most WAIT (here: the view's half
    second lease), then gets 409 while the first still runs, on every database."""
    hold = race["inside"] = Hold()
    key = new_key("bounded")
    first = Worker(lambda: send("/race/held/single/", key))
    hold.wait_entered()
    duplicate = Worker(lambda: send("/race/held/single/", key))
    answered_while_first_runs = duplicate.done(timeout=10)
    hold.release()
    assert answered_while_first_runs, "the duplicate's wait was not bounded"
    assert_conflict(duplicate.result(), "idempotency-lock-conflict")
    assert first.result().status == 201
    assert Order.objects.filter(reference=key).count() == 1
