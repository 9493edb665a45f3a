"""The same key with another request is a 422, never a replay of someone else's intent;
what counts as "the same request" is the fingerprint's (or the view's own) rule."""

from __future__ import annotations

import pytest

from tests.conftest import assert_problem, send
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


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


def test_custom_fingerprint(post) -> None:
    post("/orders/loose/", {"amount": 1}, key="k1")
    again = post("/orders/loose/", {"amount": 2}, key="k1")  # same intent by this view's rule
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
