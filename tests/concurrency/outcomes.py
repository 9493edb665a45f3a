"""What every race must end in, whatever the interleaving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django_idempotency.models import IdempotencyRecord
from tests.concurrency.threads import Reply, errors
from tests.testapp.models import Order


def assert_conflict(reply: Reply, kind: str | None = None) -> None:
    """A 409 problem+json with a usable ``Retry-After`` and ``no-store``."""
    assert reply.status == 409, reply
    problem = reply.problem
    assert problem["status"] == 409
    if kind is not None:
        assert problem["type"].endswith(kind), problem
    assert reply.retry_after is not None and int(reply.retry_after) >= 1, reply
    assert reply.cache_control == "no-store", reply


def assert_ran_once(results: list[Any], key: str, *, status: int = 201) -> Reply:
    """One execution, one business row; every other reply a 409 or the same response.

    Returns the executed reply.
    """
    assert errors(results) == [], errors(results)
    unexpected = [reply for reply in results if reply.status not in (status, 409)]
    assert unexpected == [], unexpected
    executed = [reply for reply in results if reply.status == status and not reply.replayed]
    assert len(executed) == 1, results
    first = executed[0]
    for reply in results:
        if reply.status == 409:
            assert_conflict(reply)
        else:
            assert (reply.status, reply.body) == (first.status, first.body), reply
    assert Order.objects.filter(reference=key).count() == 1
    record = IdempotencyRecord.objects.get(key=key)
    assert record.status == IdempotencyRecord.Status.COMPLETED
    assert bytes(record.response_body) == first.body
    return first


def assert_at_most_one_run(results: list[Any]) -> list[Reply]:
    """No error, only 201s and 409s, at most one run, every other 201 its replay; the run."""
    assert errors(results) == [], errors(results)
    assert {reply.status for reply in results} <= {201, 409}, results
    executed = [reply for reply in results if reply.status == 201 and not reply.replayed]
    assert len(executed) <= 1, results
    for reply in results:
        if reply.status == 409:
            assert_conflict(reply)
        elif executed:
            assert reply.body == executed[0].body, reply
    return executed


def assert_never_twice(results: list[Any], key: str, retry: Callable[[], Reply]) -> None:
    """In-memory SQLite's weaker promise: its shared-cache locks fail at once instead of
    waiting, so even the claimer may be refused (409, nothing committed). The view still
    never runs twice, nothing is a 500, and the next retry completes it."""
    executed = assert_at_most_one_run(results)
    if not executed:
        assert Order.objects.filter(reference=key).count() == 0
        assert retry().status == 201
    assert Order.objects.filter(reference=key).count() == 1
