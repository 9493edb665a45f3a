"""Answers over ``MAX_RESPONSE_BYTES``: delivered whole to the first client, never stored;
a replay is a 303 to where the outcome can be read instead."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import assert_problem
from tests.testapp import views
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


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
