"""Liveness: a retry tells a crashed attempt from a slow one by the lock the attempt
holds while it works, not by its lease (docs/guarantees.md, "Crash recovery").

The attempt is stopped inside its view (a real thread on its own connection) and its
connection is killed from the server side, as a SIGKILLed worker's would be: its thread
never gets to undo anything before the retry arrives. Every view here has the default
90-second lease, so a retry that succeeds within seconds did not wait for it.

Behind a transaction-pooling PgBouncer (tests/pooler.py) a crash looks different: the
worker's socket to the pooler closes, and the pooler closes the server session that was
in a transaction for it; so there the client sockets are cut instead. ``atomic=False``
has no session lock there: its attempts have their lease only.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection

from django_idempotency import database, engine
from django_idempotency.models import IdempotencyRecord, Liveness
from tests import pooler
from tests.concurrency.outcomes import assert_conflict
from tests.concurrency.threads import Reply, Worker, new_key, send
from tests.testapp.models import Order
from tests.testapp.race_views import Hold

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("row_locks")]

PATHS = {
    "two_phase": "/race/crash/two-phase/",
    "single_transaction": "/race/crash/single/",
    "non_atomic": "/race/crash/non-atomic/",
}
LIVENESS = {"two_phase": "row", "single_transaction": "row", "non_atomic": "session"}
# Past the grace a just-claimed attempt gets before its free lock counts as a crash.
PAST_GRACE = engine.LOCK_GRACE.total_seconds() + 0.2


def kill_other_connections() -> None:
    """What a SIGKILLed worker does to its connections: the server ends its session."""
    if pooler.POOLER:
        assert pooler.cut_other_clients(connection) > 0
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        else:
            cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            )
            for (pid,) in cursor.fetchall():
                cursor.execute(f"KILL CONNECTION {int(pid)}")


def held(race: dict[str, Any], path: str, key: str) -> tuple[Worker, Hold]:
    """A first attempt, stopped inside its view."""
    hold = Hold()
    race["inside"] = hold
    worker = Worker(lambda: send(path, key))
    hold.wait_entered()
    return worker, hold


def needs_session_locks(mode: str) -> None:
    if mode == "non_atomic" and pooler.TRANSACTION_POOLING:
        pytest.skip(
            "atomic=False shows its liveness by a session lock, which SESSION_LOCKS 'auto' "
            "turns off behind a transaction pooler: see test_behind_a_transaction_pooler_*"
        )


def not_an_answer(result: Any) -> bool:
    """The killed attempt may not have answered 2xx (its connection is gone)."""
    return isinstance(result, BaseException) or result.status >= 400


@pytest.mark.parametrize("mode", list(PATHS))
def test_a_killed_attempt_is_taken_over_at_once(race: dict[str, Any], mode: str) -> None:
    needs_session_locks(mode)
    path, key = PATHS[mode], new_key(f"killed-{mode}")
    first, hold = held(race, path, key)
    if mode != "single_transaction":
        record = IdempotencyRecord.objects.get(key=key)
        assert record.liveness == LIVENESS[mode]
    kill_other_connections()
    time.sleep(PAST_GRACE)

    retry = send(path, key)

    # single_transaction: the claim rolled back with the connection, so the retry is a
    # first attempt; otherwise it takes the same operation over.
    assert retry.status == 201, retry
    assert retry.json["attempt"] == (1 if mode == "single_transaction" else 2)
    hold.release()
    assert not_an_answer(first.result())
    assert Order.objects.filter(reference=key).count() == 1
    record = IdempotencyRecord.objects.get(key=key)
    assert record.status == IdempotencyRecord.Status.COMPLETED
    assert send(path, key).body == retry.body


@pytest.mark.parametrize("mode", ["two_phase", "non_atomic"])
def test_a_live_attempt_is_never_taken_over(race: dict[str, Any], mode: str) -> None:
    """Past the grace, its lease still running, the attempt holds its lock: 409 with
    ``Retry-After: 1``, the time to come back for its answer, not the lease's."""
    needs_session_locks(mode)
    path, key = PATHS[mode], new_key(f"alive-{mode}")
    first, hold = held(race, path, key)
    time.sleep(PAST_GRACE)

    duplicate = send(path, key)

    assert_conflict(duplicate, "idempotency-request-in-progress")
    assert duplicate.retry_after == "1"
    hold.release()
    answer = first.result()
    assert isinstance(answer, Reply) and answer.status == 201 and answer.json["attempt"] == 1
    assert send(path, key).body == answer.body
    assert Order.objects.filter(reference=key).count() == 1


@pytest.mark.parametrize("mode", ["two_phase", "non_atomic"])
def test_the_attempt_that_took_over_shows_it_is_alive(race: dict[str, Any], mode: str) -> None:
    """The taker holds the lock itself: a third request neither takes it over nor waits
    for the lease."""
    needs_session_locks(mode)
    path, key = PATHS[mode], new_key(f"taker-{mode}")
    first, first_hold = held(race, path, key)
    kill_other_connections()
    time.sleep(PAST_GRACE)
    taker, taker_hold = held(race, path, key)
    time.sleep(PAST_GRACE)

    third = send(path, key)

    assert_conflict(third, "idempotency-request-in-progress")
    assert third.retry_after == "1"
    taker_hold.release()
    answer = taker.result()
    assert isinstance(answer, Reply) and answer.status == 201 and answer.json["attempt"] == 2
    first_hold.release()
    assert not_an_answer(first.result())
    assert Order.objects.filter(reference=key).count() == 1


@pytest.mark.parametrize("mode", ["two_phase", "non_atomic"])
def test_a_just_claimed_attempt_gets_its_grace(race: dict[str, Any], mode: str) -> None:
    """Within the grace a free lock may be the instant between claim and lock."""
    needs_session_locks(mode)
    path, key = PATHS[mode], new_key(f"grace-{mode}")
    first, hold = held(race, path, key)
    kill_other_connections()

    early = send(path, key)

    assert_conflict(early, "idempotency-request-in-progress")
    assert early.retry_after == "1"
    time.sleep(PAST_GRACE)
    assert send(path, key).status == 201
    hold.release()
    first.result()


def test_atomic_false_without_session_locks_waits_for_the_lease(
    race: dict[str, Any], settings: Any
) -> None:
    settings.IDEMPOTENCY = {"SESSION_LOCKS": False}
    path, key = PATHS["non_atomic"], new_key("lease-only")
    first, hold = held(race, path, key)
    assert IdempotencyRecord.objects.get(key=key).liveness == Liveness.LEASE
    kill_other_connections()
    time.sleep(PAST_GRACE)

    retry = send(path, key)

    assert_conflict(retry, "idempotency-request-in-progress")
    assert int(retry.retry_after or 0) > 60  # the seconds left on the 90-second lease
    hold.release()
    first.result()


def test_session_locks_auto_is_off_behind_a_transaction_pooler(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``DISABLE_SERVER_SIDE_CURSORS`` is what Django asks of a project behind a
    transaction-pooling PgBouncer, where a session lock could be handed to a retry."""
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", False)
    assert database.session_locks(connection)
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    assert not database.session_locks(connection)
    settings.IDEMPOTENCY = {"SESSION_LOCKS": True}
    assert database.session_locks(connection)
    settings.IDEMPOTENCY = {"SESSION_LOCKS": False}
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", False)
    assert not database.session_locks(connection)


behind_a_pooler = pytest.mark.skipif(
    not pooler.TRANSACTION_POOLING,
    reason="runs through a transaction pooler only (POOLER=transaction)",
)


@behind_a_pooler
def test_behind_a_transaction_pooler_session_locks_are_off() -> None:
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"]
    assert not database.session_locks(connection)


@behind_a_pooler
def test_behind_a_transaction_pooler_atomic_false_has_its_lease_only(
    race: dict[str, Any],
) -> None:
    """With the default ``SESSION_LOCKS``: a crash blocks the key until the lease ends,
    and a live attempt's duplicate is told the lease's seconds, not ``Retry-After: 1``."""
    path, key = PATHS["non_atomic"], new_key("pooled-lease")
    first, hold = held(race, path, key)
    assert IdempotencyRecord.objects.get(key=key).liveness == Liveness.LEASE
    time.sleep(PAST_GRACE)
    duplicate = send(path, key)
    assert_conflict(duplicate, "idempotency-request-in-progress")
    assert int(duplicate.retry_after or 0) > 60
    kill_other_connections()
    time.sleep(PAST_GRACE)

    retry = send(path, key)

    assert_conflict(retry, "idempotency-request-in-progress")
    assert int(retry.retry_after or 0) > 60  # the seconds left on the 90-second lease
    hold.release()
    assert not_an_answer(first.result())
    assert Order.objects.filter(reference=key).count() == 0  # its connection was cut
