"""Told expiry: first responses, replays, 409s and 422s say until when the key is
remembered (``Idempotency-Expires``, an HTTP-date), and the status endpoint gives it
(docs/reference/http.md, "Idempotency-Expires")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils.http import parse_http_date

from django_idempotency.models import IdempotencyRecord
from tests.factories import IdempotencyRecordFactory, request_fingerprint

pytestmark = pytest.mark.django_db

HEADER = "Idempotency-Expires"


def told(response) -> float:
    return float(parse_http_date(response[HEADER]))


def stored_expiry(key: str) -> float:
    return IdempotencyRecord.objects.get(key=key).expires_at.timestamp()


def test_the_first_response_and_every_replay_tell_the_expiry(post) -> None:
    first = post("/orders/", {"amount": 1}, key="k1")
    assert first.status_code == 201
    # An HTTP-date has whole seconds; on MySQL/MariaDB the first response's comes from
    # the app server's clock (no UPDATE ... RETURNING), within a second of the stored.
    slack = 2 if connection.vendor == "mysql" else 1
    assert abs(told(first) - stored_expiry("k1")) < slack
    replay = post("/orders/", {"amount": 1}, key="k1")
    assert replay["Idempotent-Replayed"] == "true"
    assert abs(told(replay) - stored_expiry("k1")) < 1


def test_a_409_and_a_422_tell_the_expiry(post) -> None:
    record = IdempotencyRecordFactory(
        key="k1", route="/orders/", fingerprint=request_fingerprint(data={"amount": 1})
    )
    busy = post("/orders/", {"amount": 1}, key="k1")
    assert busy.status_code == 409
    assert abs(told(busy) - record.expires_at.timestamp()) < 1
    reused = post("/orders/", {"amount": 2}, key="k1")
    assert reused.status_code == 422
    assert abs(told(reused) - record.expires_at.timestamp()) < 1


def test_the_expiry_follows_the_views_ttl(post) -> None:
    first = post("/orders/short/", {"amount": 1}, key="k1")
    record = IdempotencyRecord.objects.get(key="k1")
    assert record.expires_at - record.completed_at < timedelta(hours=1)
    assert abs(told(first) - record.expires_at.timestamp()) < 2


def test_an_unguarded_request_tells_nothing(post) -> None:
    assert HEADER not in post("/orders/", {"amount": 1})
