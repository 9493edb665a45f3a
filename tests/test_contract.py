"""The HTTP contract of docs/design.md section 5, row by row, through ``@idempotent``."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import Client, override_settings
from django.utils import timezone

from django_idempotency import responses
from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import needs_drf, send
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp import views
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db

STORED = {"Content-Type", "Location", "Content-Location", "ETag", "Last-Modified", "Link"}
# A replay keeps the original's caching rules, and the Vary they hold for.
CACHING = {"Cache-Control", "Vary"}
# Also stored, when the view sets them: Content-Encoding, -Language, -Disposition.
NEVER = {
    "set-cookie",
    "date",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "www-authenticate",
}


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    problem = response.json()
    assert problem["type"].endswith(slug), problem
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem


# First request and replay.


def test_first_request_runs_and_stores(post) -> None:
    response = post("/orders/", {"reference": "r1", "amount": 5}, key="k1")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    order = Order.objects.get()
    assert response.json() == {"id": order.pk, "amount": 5}
    record = IdempotencyRecord.objects.get()
    assert (record.scope, record.key, record.status) == ("anonymous", "k1", Status.COMPLETED)
    assert record.response_status == 201
    assert bytes(record.response_body) == response.content
    assert (record.method, record.route) == ("POST", "/orders/")
    assert record.completed_at is not None
    assert record.locked_until is None


def test_replay_returns_stored_answer_without_running_the_view(post) -> None:
    first = post("/orders/", {"amount": 5}, key="k1")
    replays = [post("/orders/", {"amount": 5}, key="k1") for _ in range(3)]
    assert Order.objects.count() == 1
    for again in replays:
        assert again.status_code == 201
        assert again.content == first.content
        assert again["Idempotent-Replayed"] == "true"
        assert again["Location"] == first["Location"]
        assert again["X-Order-Id"] == first["X-Order-Id"]
        assert again["Content-Type"] == "application/json"
    assert IdempotencyRecord.objects.get().attempts == 1


def test_allow_listed_headers_are_stored_and_replayed(post) -> None:
    first = post("/orders/headers/", {}, key="k1")
    assert first.status_code == 201
    assert first.cookies["tracking"].value == "abc"  # the first answer is untouched
    record = IdempotencyRecord.objects.get()
    assert set(record.response_headers) == STORED | CACHING | {"X-Order-Id", "X-Custom"}
    again = post("/orders/headers/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    for name in STORED | {"X-Order-Id", "X-Custom"}:
        assert again[name] == first[name], name


def test_per_client_and_hop_by_hop_headers_are_never_stored_or_replayed(post) -> None:
    post("/orders/headers/", {}, key="k1")
    stored = {name.lower() for name in IdempotencyRecord.objects.get().response_headers}
    assert not stored & NEVER
    again = post("/orders/headers/", {}, key="k1")
    assert "tracking" not in again.cookies
    assert "Set-Cookie" not in again
    assert "Date" not in again
    assert "Accept-Language" in again["Vary"]  # middleware may add its own
    assert again["Cache-Control"] == "private"
    for name in ("Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Trailer"):
        assert name not in again, name
    assert "WWW-Authenticate" not in again
    assert "Proxy-Authenticate" not in again


def test_representation_headers_of_the_stored_body_are_replayed(post) -> None:
    """Content-Encoding, -Language and -Disposition describe the stored bytes: gzip
    bytes replayed without ``Content-Encoding: gzip`` would be garbage to the client."""
    first = post("/orders/download/", {}, key="k1")
    again = post("/orders/download/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    for name in ("Content-Type", "Content-Encoding", "Content-Language", "Content-Disposition"):
        assert again[name] == first[name], name


def test_replay_of_a_body_without_content_type(post) -> None:
    post("/orders/redirect/", {}, key="k1")
    again = post("/orders/redirect/", {}, key="k1")
    assert again.status_code == 303
    assert again["Idempotent-Replayed"] == "true"
    assert again["Location"] == f"/orders/{Order.objects.get().pk}/"


# Fingerprint.


def test_json_key_order_replays(client) -> None:
    first = send(client, "/orders/", '{"a":1,"b":2}', key="k1")
    again = send(client, "/orders/", '{"b": 2, "a": 1}', key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1


def test_different_body_is_422(post) -> None:
    post("/orders/", {"amount": 1}, key="k1")
    response = post("/orders/", {"amount": 2}, key="k1")
    assert_problem(response, 422, "idempotency-key-reused")
    assert Order.objects.count() == 1


def test_same_key_on_another_route_is_422(post) -> None:
    post("/orders/", {}, key="k1")
    assert_problem(post("/orders/flaky/", {}, key="k1"), 422, "idempotency-key-reused")
    assert Order.objects.count() == 1


def test_same_key_on_another_object_of_one_route_is_422(post) -> None:
    post("/orders/1/pay/", {}, key="k1")
    assert_problem(post("/orders/2/pay/", {}, key="k1"), 422, "idempotency-key-reused")
    assert post("/orders/1/pay/", {}, key="k1")["Idempotent-Replayed"] == "true"


def test_same_key_with_another_method_is_422(post) -> None:
    post("/orders/", {}, key="k1")
    assert_problem(post("/orders/", {}, key="k1", method="put"), 422, "idempotency-key-reused")
    assert Order.objects.count() == 1


def test_form_field_order_replays(client) -> None:
    form = "application/x-www-form-urlencoded"
    send(client, "/orders/", "a=1&b=2", key="k1", content_type=form)
    again = send(client, "/orders/", "b=2&a=1", key="k1", content_type=form)
    assert again["Idempotent-Replayed"] == "true"
    assert_problem(
        send(client, "/orders/", "a=1&b=3", key="k1", content_type=form),
        422,
        "idempotency-key-reused",
    )
    assert Order.objects.count() == 1


def test_query_string_counts(post) -> None:
    post("/orders/?x=1", {}, key="k1")
    assert post("/orders/?x=1", {}, key="k1")["Idempotent-Replayed"] == "true"
    assert_problem(post("/orders/?x=2", {}, key="k1"), 422, "idempotency-key-reused")
    assert_problem(post("/orders/", {}, key="k1"), 422, "idempotency-key-reused")
    assert Order.objects.count() == 1


def test_mismatch_is_checked_before_in_progress(post) -> None:
    IdempotencyRecordFactory(key="k1", fingerprint=request_fingerprint(data={"amount": 1}))
    assert_problem(post("/orders/", {"amount": 2}, key="k1"), 422, "idempotency-key-reused")


# In progress.


def test_in_progress_is_409_with_retry_after_and_operation(post) -> None:
    record = IdempotencyRecordFactory(
        key="k1",
        fingerprint=request_fingerprint(data={"amount": 1}),
        locked_until=timezone.now() + timedelta(seconds=30),
    )
    response = post("/orders/", {"amount": 1}, key="k1")
    problem = assert_problem(response, 409, "idempotency-request-in-progress")
    assert 20 <= int(response["Retry-After"]) <= 30  # the seconds left on the lease
    assert problem["operation"] == f"/idempotency/operations/{record.pk}/"
    assert Order.objects.count() == 0
    record.refresh_from_db()
    assert record.status == Status.IN_PROGRESS
    assert record.attempts == 1


def test_retry_after_is_rounded_up(post) -> None:
    """Whole seconds, rounded up: never ``Retry-After: 0``, which invites a busy loop."""
    IdempotencyRecordFactory(
        key="k1",
        fingerprint=request_fingerprint(data={}),
        locked_until=timezone.now() + timedelta(seconds=3),
    )
    response = post("/orders/", {}, key="k1")
    assert response.status_code == 409
    assert 1 <= int(response["Retry-After"]) <= 3


def test_a_dead_lease_is_taken_over_by_the_retry(post) -> None:
    stuck = IdempotencyRecordFactory(stuck=True, key="k1", fingerprint=request_fingerprint(data={}))
    response = post("/orders/", {}, key="k1")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    record = IdempotencyRecord.objects.get()
    assert record.pk == stuck.pk  # the same operation
    assert record.attempts == 2
    assert record.lease_token != stuck.lease_token
    assert record.status == Status.COMPLETED
    assert Order.objects.count() == 1


@override_settings(IDEMPOTENCY={"WAIT": timedelta(seconds=0.3)})
def test_wait_then_409_when_nothing_changes(post) -> None:
    IdempotencyRecordFactory(key="k1", fingerprint=request_fingerprint(data={}))
    response = post("/orders/", {}, key="k1")
    assert_problem(response, 409, "idempotency-request-in-progress")
    assert Order.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@override_settings(IDEMPOTENCY={"WAIT": timedelta(seconds=10)})
def test_wait_replays_when_the_first_attempt_completes_meanwhile(post) -> None:
    record = IdempotencyRecordFactory(key="k1", fingerprint=request_fingerprint(data={}))
    completed = threading.Event()

    def finish() -> None:
        try:
            time.sleep(0.3)
            IdempotencyRecord.objects.filter(pk=record.pk).update(
                status=Status.COMPLETED,
                response_status=201,
                response_headers={"Content-Type": "application/json"},
                response_body=b'{"id": "from the first attempt"}',
                completed_at=timezone.now(),
                locked_until=None,
            )
            completed.set()
        finally:
            connections.close_all()

    worker = threading.Thread(target=finish)
    worker.start()
    try:
        response = post("/orders/", {}, key="k1")
    finally:
        worker.join()
    if not completed.is_set():
        pytest.skip(f"the second connection could not write on {connection.vendor}")
    assert response.status_code == 201
    assert response["Idempotent-Replayed"] == "true"
    assert response.json() == {"id": "from the first attempt"}
    assert Order.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@override_settings(IDEMPOTENCY={"WAIT": timedelta(seconds=10)})
def test_wait_runs_the_view_when_the_first_attempt_is_released_meanwhile(post) -> None:
    record = IdempotencyRecordFactory(key="k1", fingerprint=request_fingerprint(data={}))
    released = threading.Event()

    def release() -> None:
        try:
            time.sleep(0.3)
            IdempotencyRecord.objects.filter(pk=record.pk).delete()
            released.set()
        finally:
            connections.close_all()

    worker = threading.Thread(target=release)
    worker.start()
    try:
        response = post("/orders/", {}, key="k1")
    finally:
        worker.join()
    if not released.is_set():
        pytest.skip(f"the second connection could not write on {connection.vendor}")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().pk != record.pk


# Missing key.


def test_missing_key_where_required_by_the_decorator_is_400(post) -> None:
    response = post("/orders/required/", {})
    assert_problem(response, 400, "idempotency-key-missing")
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


@override_settings(IDEMPOTENCY={"REQUIRED": True})
def test_missing_key_where_required_by_settings_is_400(post) -> None:
    assert_problem(post("/orders/", {}), 400, "idempotency-key-missing")
    assert Order.objects.count() == 0


def test_optional_missing_key_runs_unguarded(post) -> None:
    assert post("/orders/", {}).status_code == 201
    assert post("/orders/", {}).status_code == 201
    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "head", "options"])
def test_safe_methods_pass_through_unguarded(client, method: str) -> None:
    for _ in range(2):
        response = getattr(client, method)("/plain/", HTTP_IDEMPOTENCY_KEY="k1")
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "head", "options"])
@override_settings(IDEMPOTENCY={"REQUIRED": True})
def test_safe_methods_need_no_key_even_when_required(client, method: str) -> None:
    assert getattr(client, method)("/plain/").status_code == 200


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_unsafe_methods_are_guarded(post, method: str) -> None:
    first = post("/plain/", {}, key=f"k-{method}", method=method)
    again = post("/plain/", {}, key=f"k-{method}", method=method)
    assert first.content == again.content == f"{method.upper()} ok".encode()
    assert again["Idempotent-Replayed"] == "true"


# Failures and what is stored.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", ["raise", "500", "502", "503"])
def test_failed_attempt_rolls_back_and_releases_the_key(failure: str) -> None:
    client = Client(raise_request_exception=False)
    views.CONTROL["fail"] = failure
    response = send(client, "/orders/flaky/", {"amount": 3}, key="k1")
    assert response.status_code == (500 if failure == "raise" else int(failure))
    assert "Idempotent-Replayed" not in response
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0

    views.CONTROL["fail"] = None
    retry = send(client, "/orders/flaky/", {"amount": 3}, key="k1")
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED
    assert send(client, "/orders/flaky/", {"amount": 3}, key="k1")["Idempotent-Replayed"] == "true"


def test_exception_propagates_to_django(post) -> None:
    views.CONTROL["fail"] = "raise"
    with pytest.raises(RuntimeError, match="the view failed"):
        post("/orders/flaky/", {}, key="k1")
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "status"),
    [("/orders/", 201), ("/orders/redirect/", 303), ("/orders/reject/", 409)],
)
def test_2xx_3xx_and_the_views_own_4xx_are_stored_and_replayed(post, path, status) -> None:
    first = post(path, {}, key="k1")
    again = post(path, {}, key="k1")
    assert first.status_code == again.status_code == status
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get().response_status == status
    assert Order.objects.count() == 1


@pytest.mark.parametrize("status", ["400", "404", "410", "422"])
def test_every_4xx_the_view_returns_is_stored(post, status) -> None:
    views.CONTROL["fail"] = status
    post("/orders/flaky/", {}, key="k1")
    views.CONTROL["fail"] = None
    again = post("/orders/flaky/", {}, key="k1")
    assert again.status_code == int(status)
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


# Expiry.


def test_expired_record_counts_as_absent(post) -> None:
    expired = IdempotencyRecordFactory(
        expired=True, key="k1", fingerprint=request_fingerprint(data={})
    )
    response = post("/orders/", {}, key="k1")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert Order.objects.count() == 1
    record = IdempotencyRecord.objects.get()
    assert record.pk != expired.pk  # a new operation
    assert record.expires_at > timezone.now()


def test_expired_record_with_another_fingerprint_is_no_mismatch(post) -> None:
    IdempotencyRecordFactory(expired=True, key="k1", fingerprint="0" * 64)
    assert post("/orders/", {}, key="k1").status_code == 201


def test_expired_in_progress_record_with_ended_lease_counts_as_absent(post) -> None:
    old = IdempotencyRecordFactory(
        key="k1",
        fingerprint=request_fingerprint(data={}),
        expires_at=timezone.now() - timedelta(seconds=2),
        locked_until=timezone.now() - timedelta(seconds=1),
    )
    assert post("/orders/", {}, key="k1").status_code == 201
    assert IdempotencyRecord.objects.get().pk != old.pk


def test_expired_in_progress_record_with_live_lease_is_still_in_progress(post) -> None:
    """A ``ttl`` shorter than the lease must never free a key whose attempt still runs."""
    old = IdempotencyRecordFactory(
        key="k1",
        fingerprint=request_fingerprint(data={}),
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    response = post("/orders/", {}, key="k1")
    assert response.status_code == 409
    assert IdempotencyRecord.objects.get().pk == old.pk
    assert not Order.objects.exists()


def test_default_ttl(post) -> None:
    before = timezone.now()
    post("/orders/", {}, key="k1")
    expires_at = IdempotencyRecord.objects.get().expires_at
    assert before + timedelta(hours=24) <= expires_at <= timezone.now() + timedelta(hours=24)


# Large and streaming responses.


@override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 10})
def test_large_response_is_delivered_but_not_stored(post) -> None:
    first = post("/orders/", {"amount": 1}, key="k1")
    order = Order.objects.get()
    assert first.status_code == 201
    assert first.json() == {"id": order.pk, "amount": 1}
    record = IdempotencyRecord.objects.get()
    assert record.status == Status.COMPLETED
    assert record.response_body is None
    assert record.response_status == 201

    again = post("/orders/", {"amount": 1}, key="k1")
    problem = assert_problem(again, 303, "idempotency-response-not-stored")
    assert again["Location"] == f"/orders/{order.pk}/"
    assert again["Idempotent-Replayed"] == "true"
    assert problem["response_status"] == 201
    assert problem["operation"] == f"/idempotency/operations/{record.pk}/"
    assert Order.objects.count() == 1


@override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 3})
def test_large_response_without_location_points_at_the_status_url(post) -> None:
    assert post("/plain/", {}, key="k1").content == b"POST ok"
    record = IdempotencyRecord.objects.get()
    again = post("/plain/", {}, key="k1")
    assert_problem(again, 303, "idempotency-response-not-stored")
    assert again["Location"] == f"/idempotency/operations/{record.pk}/"


@override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 8})
def test_long_stream_is_delivered_intact_but_not_stored(post) -> None:
    chunks = [b"0123", b"4567", b"89ab", b"cdef", b"tail"]
    views.CONTROL["chunks"] = chunks
    first = post("/orders/stream/chunks/", {}, key="k1")
    assert first.streaming
    assert b"".join(first.streaming_content) == b"".join(chunks)
    record = IdempotencyRecord.objects.get()
    assert record.status == Status.COMPLETED
    assert record.response_body is None
    again = post("/orders/stream/chunks/", {}, key="k1")
    assert_problem(again, 303, "idempotency-response-not-stored")
    assert again["Location"] == f"/idempotency/operations/{record.pk}/"
    assert Order.objects.count() == 1


@override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": 10})
def test_long_single_chunk_stream_keeps_its_location(post) -> None:
    views.CONTROL["stream_bytes"] = 100
    first = post("/orders/stream/", {}, key="k1")
    assert b"".join(first.streaming_content) == b"x" * 100
    again = post("/orders/stream/", {}, key="k1")
    assert_problem(again, 303, "idempotency-response-not-stored")
    assert again["Location"] == f"/orders/{Order.objects.get().pk}/"


def test_small_stream_is_stored_and_replayed_byte_identical(post) -> None:
    chunks = [b"first,", b"", b"second,", b"\x00\xff third"]
    views.CONTROL["chunks"] = chunks
    first = post("/orders/stream/chunks/", {}, key="k1")
    delivered = b"".join(first.streaming_content)
    assert delivered == b"".join(chunks)
    assert bytes(IdempotencyRecord.objects.get().response_body) == delivered
    again = post("/orders/stream/chunks/", {}, key="k1")
    assert again.status_code == 201
    assert again.content == delivered
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


@override_settings(IDEMPOTENCY={"MAX_RESPONSE_BYTES": len(b"POST ok")})
def test_response_of_exactly_max_bytes_is_stored(post) -> None:
    assert post("/plain/", {}, key="k1").content == b"POST ok"
    again = post("/plain/", {}, key="k1")
    assert again.status_code == 200
    assert again.content == b"POST ok"
    assert again["Idempotent-Replayed"] == "true"


# The store is down.


def _rename_records_table(new: str, old: str) -> None:
    with connection.schema_editor() as editor:
        editor.alter_db_table(IdempotencyRecord, old, new)


@pytest.fixture
def records_table_gone():
    table = IdempotencyRecord._meta.db_table
    _rename_records_table(table + "_away", table)
    try:
        yield
    finally:
        _rename_records_table(table, table + "_away")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path",
    [
        "/orders/",
        "/orders/single/",
        "/orders/nonatomic/",
        "/orders/async/",
        pytest.param("/api/plain/", marks=needs_drf),
    ],
)
def test_store_unreachable_is_503_not_500(records_table_gone, path) -> None:
    client = Client(raise_request_exception=False)
    response = send(client, path, {}, key="k1")
    assert_problem(response, 503, "idempotency-unavailable")
    assert int(response["Retry-After"]) >= 1
    assert Order.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_store_back_after_an_outage(post) -> None:
    table = IdempotencyRecord._meta.db_table
    _rename_records_table(table + "_away", table)
    try:
        assert post("/orders/", {}, key="k1").status_code == 503
    finally:
        _rename_records_table(table, table + "_away")
    assert post("/orders/", {}, key="k1").status_code == 201
    assert post("/orders/", {}, key="k1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


# problem+json.


def test_every_problem_has_its_own_type() -> None:
    from django_idempotency import problems as module

    problems = [value for value in vars(module).values() if isinstance(value, module.Problem)]
    assert len(problems) >= 8
    assert len({problem.slug for problem in problems}) == len(problems)


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: responses.missing_key(), 400),
        (lambda: responses.invalid_key("Bad."), 400),
        (lambda: responses.busy("lock", 1), 409),
        (lambda: responses.busy("lease_lost", 1), 409),
        (lambda: responses.unavailable(), 503),
    ],
)
def test_problem_responses_are_complete(make, status) -> None:
    response = make()
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    body = json.loads(response.content)
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status


def test_conflict_problems_carry_retry_after() -> None:
    assert responses.busy("lock", 3)["Retry-After"] == "3"
    assert responses.busy("lease_lost", 1)["Retry-After"] == "1"
    lock = json.loads(responses.busy("lock", 1).content)
    lost = json.loads(responses.busy("lease_lost", 1).content)
    assert lock["type"] != lost["type"]


@override_settings(IDEMPOTENCY={"PROBLEM_BASE_URL": "https://example.com/problems/"})
def test_problem_base_url_setting(post) -> None:
    response = post("/orders/required/", {})
    assert response.json()["type"] == "https://example.com/problems/idempotency-key-missing"


# ATOMIC_REQUESTS: guarded views opt out, so the claim still commits on its own.


@pytest.fixture
def atomic_requests(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


@pytest.mark.django_db(transaction=True)
def test_decorator_under_atomic_requests(atomic_requests, post) -> None:
    first = post("/orders/probe/", {}, key="k1")
    assert first.status_code == 201
    assert views.CONTROL["atomic_blocks"] == 1  # only the guard's own transaction
    again = post("/orders/probe/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_the_claim_commits_before_the_view_under_atomic_requests(atomic_requests, post) -> None:
    """Another connection sees the IN_PROGRESS record while the view runs: the claim
    did not wait for the request's transaction."""
    views.CONTROL["peek"] = True
    assert post("/orders/probe/", {}, key="k1").status_code == 201
    assert views.CONTROL["peeked"] == [Status.IN_PROGRESS]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/orders/single/", "/orders/nonatomic/"])
def test_other_modes_under_atomic_requests(atomic_requests, post, path) -> None:
    assert post(path, {}, key="k1").status_code == 201
    assert post(path, {}, key="k1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_failure_under_atomic_requests_releases(atomic_requests) -> None:
    client = Client(raise_request_exception=False)
    views.CONTROL["fail"] = "raise"
    assert send(client, "/orders/flaky/", {}, key="k1").status_code == 500
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0
    views.CONTROL["fail"] = None
    assert send(client, "/orders/flaky/", {}, key="k1").status_code == 201


@needs_drf
@pytest.mark.django_db(transaction=True)
def test_mixin_under_atomic_requests(atomic_requests) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    first = client.post("/api/plain/", {"reference": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == 201
    again = client.post("/api/plain/", {"reference": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    invalid = client.post(
        "/api/validating/",
        {"reference": "r", "amount": -1},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    assert invalid.status_code == 400
    assert Order.objects.count() == 1  # "before-validation" rolled back
    assert not IdempotencyRecord.objects.filter(key="k2").exists()


@pytest.mark.django_db(transaction=True)
def test_requests_without_a_key_keep_atomic_requests(atomic_requests) -> None:
    """The opt-out is for the claim's sake: a request the guard lets through (no key,
    optional) must still run atomically as the project asked, or a failure half-way
    leaves half its writes."""
    client = Client(raise_request_exception=False)
    views.CONTROL["fail"] = "raise"
    assert send(client, "/orders/flaky/", {}).status_code == 500
    assert Order.objects.count() == 0
    views.CONTROL["fail"] = None
    assert send(client, "/orders/probe/", {}).status_code == 201
    assert views.CONTROL["atomic_blocks"] == 1


@pytest.mark.django_db(transaction=True)
def test_the_projects_own_non_atomic_requests_is_kept(atomic_requests, post) -> None:
    assert post("/orders/probe/opted-out/", {}).status_code == 201
    assert views.CONTROL["atomic_blocks"] == 0
    assert post("/orders/probe/opted-out/", {}, key="k1").status_code == 201
    assert views.CONTROL["atomic_blocks"] == 1  # the guard's own transaction


@needs_drf
@pytest.mark.django_db(transaction=True)
def test_unguarded_drf_actions_keep_atomic_requests(atomic_requests) -> None:
    from rest_framework.test import APIClient

    client = APIClient(raise_request_exception=False)
    views.CONTROL["fail"] = "raise"
    assert client.delete("/api/plain/", HTTP_IDEMPOTENCY_KEY="k1").status_code == 500
    assert Order.objects.count() == 0
    views.CONTROL["fail"] = None
    assert client.delete("/api/plain/", HTTP_IDEMPOTENCY_KEY="k1").status_code == 204
    assert Order.objects.count() == 1


# Decorator arguments: natural keys, payload hashes, ttl/lease, fingerprint, methods.


def test_natural_key_needs_no_header(post) -> None:
    first = post("/invoices/7/pay/", {"amount": 1})
    again = post("/invoices/7/pay/", {"amount": 1}, key="the-header-is-ignored")
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert post("/invoices/8/pay/", {"amount": 1}).status_code == 201
    assert Order.objects.count() == 2
    assert sorted(IdempotencyRecord.objects.values_list("key", flat=True)) == [
        "invoice:7",
        "invoice:8",
    ]


def test_natural_key_with_another_payload_is_422(post) -> None:
    post("/invoices/7/pay/", {"amount": 1})
    assert_problem(post("/invoices/7/pay/", {"amount": 2}), 422, "idempotency-key-reused")


def test_payload_hash_key_dedupes_redeliveries(client) -> None:
    send(client, "/hooks/", '{"event": "paid", "id": 1}')
    again = send(client, "/hooks/", '{"id": 1, "event": "paid"}')
    assert again["Idempotent-Replayed"] == "true"
    assert send(client, "/hooks/", {"event": "paid", "id": 2}).status_code == 201
    assert Order.objects.count() == 2
    assert all(
        key.startswith("payload:")
        for key in IdempotencyRecord.objects.values_list("key", flat=True)
    )


def test_key_function_without_a_key_runs_unguarded(post) -> None:
    post("/orders/by-ref/", {})
    post("/orders/by-ref/", {})
    assert IdempotencyRecord.objects.count() == 0
    post("/orders/by-ref/?ref=r1", {})
    assert post("/orders/by-ref/?ref=r1", {})["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 3


def test_key_function_result_is_validated(post) -> None:
    response = post("/orders/by-ref/?ref=" + "x" * 300, {})
    assert_problem(response, 400, "idempotency-key-invalid")
    assert Order.objects.count() == 0


def test_per_view_ttl(post) -> None:
    post("/orders/short/", {}, key="k1")
    record = IdempotencyRecord.objects.get(key="k1")
    assert record.expires_at - record.completed_at == timedelta(minutes=5)


def test_per_view_lease_sets_locked_until(post) -> None:
    seen = {}

    def spy(sender, record, **kwargs):
        seen["lease"] = record.locked_until - record.created_at

    from django_idempotency import signals

    signals.operation_started.connect(spy)
    try:
        post("/orders/short/", {}, key="k1")
    finally:
        signals.operation_started.disconnect(spy)
    assert seen["lease"] == timedelta(seconds=30)


def test_custom_fingerprint(post) -> None:
    post("/orders/loose/", {"amount": 1}, key="k1")
    again = post("/orders/loose/", {"amount": 2}, key="k1")  # same intent by this view's rule
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_methods_argument(post) -> None:
    for _ in range(2):
        post("/orders/put-only/", {}, key="k1")
    assert IdempotencyRecord.objects.count() == 0
    post("/orders/put-only/", {}, key="k1", method="put")
    assert post("/orders/put-only/", {}, key="k1", method="put")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 3


def test_template_response_is_rendered_before_it_is_stored(post) -> None:
    first = post("/orders/template/", {"amount": 4}, key="k1")
    assert first.status_code == 201
    order = Order.objects.get()
    assert first.content == f"<p>order {order.pk} for 4</p>".encode()
    assert bytes(IdempotencyRecord.objects.get().response_body) == first.content
    again = post("/orders/template/", {"amount": 4}, key="k1")
    assert again.content == first.content
    assert again["Content-Type"] == first["Content-Type"]


def test_single_transaction_with_atomic_false_is_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from django_idempotency.decorators import idempotent

    with pytest.raises(ImproperlyConfigured):
        idempotent(single_transaction=True, atomic=False)
