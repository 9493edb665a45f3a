"""A key's first request runs the view and stores its answer; a retry gets that answer
back without the view running again, headers included, except those that belong to one
client or one connection."""

from __future__ import annotations

import pytest

from django_idempotency.models import IdempotencyRecord, Status
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


def test_template_response_is_rendered_before_it_is_stored(post) -> None:
    first = post("/orders/template/", {"amount": 4}, key="k1")
    assert first.status_code == 201
    order = Order.objects.get()
    assert first.content == f"<p>order {order.pk} for 4</p>".encode()
    assert bytes(IdempotencyRecord.objects.get().response_body) == first.content
    again = post("/orders/template/", {"amount": 4}, key="k1")
    assert again.content == first.content
    assert again["Content-Type"] == first["Content-Type"]
