"""``once``: a worker's writes and its "processed" record commit together, once per key."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError, connection, transaction

from django_idempotency import keys, signals
from django_idempotency.keys import InvalidKey
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet, Status
from django_idempotency.once import (
    _NO_PAYLOAD,
    Busy,
    KeyReused,
    Unavailable,
    _fingerprint,
    once,
)
from tests.factories import IdempotencyRecordFactory
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def handle(message: dict[str, Any]) -> dict[str, Any]:
    """A consumer written the way the docs recommend."""
    with once(f"msg:{message['id']}", scope="billing", payload=message) as run:
        if run.first:
            order = Order.objects.create(reference=message["ref"], amount=message["amount"])
            run.result = {"order": order.pk}
    return {"first": run.first, **run.result}


def test_first_delivery_runs_and_stores_the_result_as_json() -> None:
    answer = handle({"id": 1, "ref": "a", "amount": 5})

    assert answer["first"] is True
    order = Order.objects.get()
    assert answer["order"] == order.pk
    record = IdempotencyRecord.objects.get(scope="billing", key="msg:1")
    assert record.status == Status.COMPLETED
    assert bytes(record.response_body) == b'{"order": %d}' % order.pk
    assert record.response_headers == {"Content-Type": "application/json"}


def test_redelivery_replays_the_stored_result_and_writes_nothing() -> None:
    first = handle({"id": 1, "ref": "a", "amount": 5})
    second = handle({"id": 1, "ref": "a", "amount": 5})

    assert second == {**first, "first": False}
    assert Order.objects.count() == 1


def test_other_keys_and_other_scopes_run() -> None:
    handle({"id": 1, "ref": "a", "amount": 5})
    handle({"id": 2, "ref": "b", "amount": 5})
    with once("msg:1", scope="shipping") as run:
        assert run.first
        run.result = None

    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 3


def test_an_exception_rolls_back_the_writes_and_leaves_no_record() -> None:
    with pytest.raises(RuntimeError), once("msg:9", scope="billing") as run:
        assert run.first
        Order.objects.create(reference="half-done")
        raise RuntimeError("handler crashed")

    assert not Order.objects.exists()
    assert not IdempotencyRecord.objects.exists()
    # The redelivery runs again, from scratch.
    assert handle({"id": 9, "ref": "again", "amount": 1})["first"] is True
    assert Order.objects.get().reference == "again"


def test_the_same_key_with_another_payload_is_refused() -> None:
    handle({"id": 1, "ref": "a", "amount": 5})

    with pytest.raises(KeyReused, match="different payload"):
        handle({"id": 1, "ref": "a", "amount": 6})
    assert Order.objects.count() == 1


def test_a_result_that_is_not_json_commits_nothing() -> None:
    with pytest.raises(TypeError, match="must be JSON"), once("msg:1", scope="s") as run:
        Order.objects.create(reference="x")
        run.result = {"when": object()}

    assert not Order.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_a_result_over_max_response_bytes_commits_nothing(settings: Any) -> None:
    settings.IDEMPOTENCY = {"MAX_RESPONSE_BYTES": 10}
    with pytest.raises(ValueError, match="MAX_RESPONSE_BYTES"), once("m", scope="s") as run:
        Order.objects.create(reference="x")
        run.result = "x" * 20

    assert not Order.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_the_body_of_a_replay_runs_but_first_is_false() -> None:
    with once("k", scope="s") as run:
        run.result = [1, "two", None]
    with once("k", scope="s") as again:
        assert again.replayed
        assert again.id == run.id
    assert again.result == [1, "two", None]


def test_scope_is_required_for_the_context_manager() -> None:
    with pytest.raises(TypeError, match="needs a scope"):
        once("msg:1")  # type: ignore[call-overload]


def test_a_string_key_cannot_decorate() -> None:
    with pytest.raises(TypeError, match="is a context manager"):

        @once("msg:1", scope="s")  # type: ignore[operator]
        def handler() -> None: ...


@pytest.mark.parametrize("key", [None, ""])
def test_empty_keys_are_refused(key: Any) -> None:
    with pytest.raises(ValueError, match="key is"):
        once(key, scope="s")


def test_an_empty_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope is empty"):
        once("msg:1", scope="")


UNFIT_KEYS = {
    "NUL": "msg\x00:1",
    "tab": "msg\t1",
    "newline at the end": "msg:1\n",
    "carriage return": "msg\r1",
    "escape": "msg\x1b1",
    "DEL": "msg\x7f1",
    "C1 next line": "msg\x851",
    "leading space": " msg:1",
    "trailing space": "msg:1 ",
    "trailing no-break space": "msg:1\u00a0",
    "only spaces": "   ",
    "256 characters": "k" * 256,
    "lone surrogate": "msg:\ud800",
}


@pytest.mark.parametrize("key", list(UNFIT_KEYS.values()), ids=list(UNFIT_KEYS))
def test_keys_the_record_cannot_hold_are_refused_before_the_database(
    key: str, django_assert_num_queries: Any
) -> None:
    """A ValueError, not ``Unavailable``: retrying the message would never make it fit."""
    with django_assert_num_queries(0), pytest.raises(InvalidKey, match=r"^once: the key"):
        once(key, scope="billing")
    assert issubclass(InvalidKey, ValueError)
    assert not IdempotencyRecord.objects.exists()


def test_the_decorator_refuses_an_unfit_key_without_calling_the_handler() -> None:
    calls: list[str] = []

    @once(key=lambda message: message["id"])
    def handler(message: dict[str, Any]) -> None:
        calls.append(message["id"])

    with pytest.raises(ValueError, match="control characters"):
        handler({"id": "msg\x00:1"})
    assert calls == []
    assert not IdempotencyRecord.objects.exists()


FIT_KEYS = {
    "255 characters": "k" * 255,
    "non-ASCII letters": "rechnung:Müller-Lüdenscheidt",
    "CJK": "注文:42",
    "four-byte emoji": "receipt:\U0001f9fe",
    "spaces inside": "import nightly 2026-12-01",
    "an int": 42,
}


@pytest.mark.parametrize("key", list(FIT_KEYS.values()), ids=list(FIT_KEYS))
def test_keys_that_fit_are_stored_exactly_and_replay(key: Any) -> None:
    with once(key, scope="billing") as run:
        run.result = "done"
    with once(key, scope="billing") as again:
        pass

    assert again.replayed and again.result == "done"
    assert IdempotencyRecord.objects.get().key == str(key)


def test_non_ascii_keys_are_not_normalised() -> None:
    """Composed and decomposed "ü" are two keys: compared exactly, like the HTTP path."""
    with once("m\u00fcller", scope="billing") as first:
        first.result = 1
    with once("mu\u0308ller", scope="billing") as second:
        second.result = 2
    assert first.first and second.first
    assert IdempotencyRecord.objects.count() == 2


SCOPES = {
    "300 characters": "s" * 300,
    "trailing space": "billing ",
    "NUL": "bill\x00ing",
    "lone surrogate": "billing\udc80",
    "255 characters": "s" * 255,
    "leading space": " billing",
    "non-ASCII": "Buchhaltung:Müller",
}


@pytest.mark.parametrize("scope", list(SCOPES.values()), ids=list(SCOPES))
def test_scopes_are_fitted_as_the_http_path_fits_them(scope: str) -> None:
    """One rule for every scope (``keys.fit_scope``): hashed when the column cannot
    hold it as it is, kept otherwise."""
    with once("msg:1", scope=scope) as run:
        run.result = 1
    with once("msg:1", scope=scope) as again:
        pass

    stored = IdempotencyRecord.objects.get().scope
    assert stored == keys.compute_scope(None, lambda request: scope)
    assert stored == run.scope
    assert again.replayed and again.result == 1


def test_an_outer_transaction_decides_for_both() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        handle({"id": 1, "ref": "a", "amount": 5})
        raise RuntimeError("the caller's transaction failed after the block")

    assert not Order.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_a_crashed_attempts_dead_lease_is_taken_over() -> None:
    """A record left IN_PROGRESS (by an ``atomic=False`` user of the key) with a dead lease."""
    stuck = IdempotencyRecordFactory(
        stuck=True, scope="billing", key="msg:1", fingerprint=_fingerprint_of(None)
    )
    with once("msg:1", scope="billing") as run:
        assert run.first
        run.result = "done"

    record = IdempotencyRecord.objects.get()
    assert record.pk == stuck.pk
    assert record.status == Status.COMPLETED
    assert record.attempts == 2


def test_a_live_lease_means_busy_with_retry_after() -> None:
    IdempotencyRecordFactory(scope="billing", key="msg:1", fingerprint=_fingerprint_of(None))

    with pytest.raises(Busy) as caught, once("msg:1", scope="billing"):
        pytest.fail("the block must not run")
    # The seconds left on a 90-second lease made with the app's clock, read on the
    # database's (SQLite's has milliseconds, so it may read a hair earlier).
    assert 1 <= caught.value.retry_after <= 91
    assert caught.value.reason == "in_progress"


def test_an_unreachable_store_raises_unavailable_and_runs_nothing() -> None:
    lost = OperationalError("server closed the connection unexpectedly")
    with (
        mock.patch.object(IdempotencyRecordQuerySet, "claim", side_effect=lost),
        pytest.raises(Unavailable) as caught,
        once("msg:1", scope="billing"),
    ):
        pytest.fail("the block must not run")
    assert caught.value.__cause__ is lost
    assert not Order.objects.exists()


def test_an_expired_record_counts_as_absent() -> None:
    IdempotencyRecordFactory(
        expired=True, scope="billing", key="msg:1", fingerprint=_fingerprint_of(None)
    )
    with once("msg:1", scope="billing", ttl=timedelta(minutes=5)) as run:
        assert run.first
        run.result = "fresh"

    record = IdempotencyRecord.objects.get()
    assert bytes(record.response_body) == b'"fresh"'


def test_completion_is_signalled_after_commit_and_replays_too() -> None:
    seen: list[str] = []

    def completed(**kwargs: Any) -> None:
        seen.append("completed:" + kwargs["key"])

    def replayed(**kwargs: Any) -> None:
        seen.append("replayed:" + kwargs["key"])

    signals.operation_completed.connect(completed)
    signals.operation_replayed.connect(replayed)
    try:
        handle({"id": 1, "ref": "a", "amount": 5})
        handle({"id": 1, "ref": "a", "amount": 5})
    finally:
        signals.operation_completed.disconnect(completed)
        signals.operation_replayed.disconnect(replayed)
    assert seen == ["completed:msg:1", "replayed:msg:1"]


class TestDecorator:
    def test_runs_the_handler_once_and_returns_the_stored_result(self) -> None:
        calls: list[dict[str, Any]] = []

        @once(key=lambda message: f"msg:{message['id']}")
        def consume(message: dict[str, Any]) -> dict[str, Any]:
            calls.append(message)
            order = Order.objects.create(reference=message["ref"])
            return {"order": order.pk}

        first = consume({"id": 7, "ref": "a"})
        second = consume({"id": 7, "ref": "a"})

        assert first == second == {"order": Order.objects.get().pk}
        assert len(calls) == 1
        record = IdempotencyRecord.objects.get()
        assert record.scope == f"{__name__}.{consume.__qualname__}"

    def test_a_payload_function_detects_reused_keys(self) -> None:
        @once(key=lambda message: message["id"], scope="orders", payload=lambda message: message)
        def consume(message: dict[str, Any]) -> None:
            Order.objects.create(reference=message["ref"])

        consume({"id": 1, "ref": "a"})
        with pytest.raises(KeyReused):
            consume({"id": 1, "ref": "b"})
        assert Order.objects.count() == 1

    def test_an_exception_propagates_and_the_next_delivery_runs(self) -> None:
        attempts: list[int] = []

        @once(key=lambda n: n, scope="flaky")
        def consume(n: int) -> int:
            attempts.append(n)
            Order.objects.create(reference=str(len(attempts)))
            if len(attempts) == 1:
                raise ConnectionError("downstream hiccup")
            return len(attempts)

        with pytest.raises(ConnectionError):
            consume(1)
        assert consume(1) == 2
        assert consume(1) == 2
        assert list(Order.objects.values_list("reference", flat=True)) == ["2"]

    def test_payload_must_be_callable(self) -> None:
        with pytest.raises(TypeError, match="callable"):
            once(key=lambda m: m, payload={"not": "callable"})


def _fingerprint_of(payload: Any) -> str:
    """The fingerprint ``once`` stores; ``None`` for a block given no payload."""
    return _fingerprint(_NO_PAYLOAD if payload is None else payload)


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite serialises writers; race tested on PG/MariaDB"
)
def test_concurrent_duplicate_deliveries_write_once() -> None:
    """Eight workers get the same message at once: one writes, seven replay its result."""
    workers = 8
    barrier = threading.Barrier(workers)
    answers: list[Any] = []
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            barrier.wait(timeout=10)
            with once("msg:race", scope="billing") as run:
                if run.first:
                    order = Order.objects.create(reference="race")
                    # Hold the transaction open so the duplicates pile up on the key.
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT pg_sleep(0.3)"
                            if connection.vendor == "postgresql"
                            else "SELECT SLEEP(0.3)"
                        )
                    run.result = {"order": order.pk}
            answers.append(run.result)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    assert Order.objects.count() == 1
    assert answers == [{"order": Order.objects.get().pk}] * workers
