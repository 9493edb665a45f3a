"""Records are read from and written to the writer, even when a router sends reads to
a replica: a stale replica must never turn a retry into a duplicate or a wrong replay.

``replica`` is a real second database (tests/settings.py), not a test mirror:
nothing replicates into it, so any record read routed there would come back empty.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, override_settings

from django_idempotency import models
from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import needs_drf, send
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", "replica"]),
    pytest.mark.usefixtures("reads_from_replica"),
]


class ReadsFromReplica:
    """Every read goes to the replica, every write to the primary."""

    def db_for_read(self, model, **hints):
        return "replica"

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        return True


@pytest.fixture
def reads_from_replica():
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.ReadsFromReplica"]):
        yield


def writer_orders() -> int:
    return Order.objects.using("default").count()


def writer_records():
    return IdempotencyRecord.objects.using("default")


def test_the_router_is_in_force() -> None:
    Order.objects.create(reference="written")
    assert Order.objects.count() == 0  # read from the (empty) replica
    assert writer_orders() == 1
    assert models.records_database() == "default"


@pytest.mark.parametrize("path", ["/orders/", "/orders/single/", "/orders/nonatomic/"])
def test_a_retry_replays_although_the_replica_is_empty(client, path) -> None:
    first = send(client, path, {"amount": 1}, key="k1")
    assert first.status_code == 201
    again = send(client, path, {"amount": 1}, key="k1")
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert writer_orders() == 1
    assert writer_records().get().status == Status.COMPLETED
    assert IdempotencyRecord.objects.using("replica").count() == 0


@pytest.mark.parametrize("path", ["/orders/", "/orders/single/", "/orders/nonatomic/"])
def test_a_stale_record_on_the_replica_is_ignored(client, path) -> None:
    """The replica still has an old answer for this key; the writer has none."""
    IdempotencyRecordFactory._meta.database = "replica"
    try:
        IdempotencyRecordFactory(
            completed=True,
            key="k1",
            route=path,
            fingerprint=request_fingerprint(path=path, data={"amount": 1}),
            response_body=b'{"stale": true}',
        )
    finally:
        IdempotencyRecordFactory._meta.database = "default"
    response = send(client, path, {"amount": 1}, key="k1")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert json.loads(response.content) != {"stale": True}
    assert writer_orders() == 1


def test_mismatch_and_in_progress_are_seen_on_the_writer(client) -> None:
    send(client, "/orders/", {"amount": 1}, key="k1")
    assert send(client, "/orders/", {"amount": 2}, key="k1").status_code == 422
    IdempotencyRecordFactory(key="k2", fingerprint=request_fingerprint(data={"amount": 1}))
    assert send(client, "/orders/", {"amount": 1}, key="k2").status_code == 409
    assert writer_orders() == 1


def test_a_dead_lease_is_taken_over_on_the_writer(client) -> None:
    stuck = IdempotencyRecordFactory(stuck=True, key="k1", fingerprint=request_fingerprint(data={}))
    assert send(client, "/orders/", {}, key="k1").status_code == 201
    record = writer_records().get()
    assert (record.pk, record.attempts, record.status) == (stuck.pk, 2, Status.COMPLETED)


def test_a_failed_attempt_is_released_on_the_writer(client) -> None:
    from tests.testapp import views

    views.CONTROL["fail"] = "502"
    assert send(client, "/orders/flaky/", {}, key="k1").status_code == 502
    assert not writer_records().exists()
    views.CONTROL["fail"] = None
    assert send(client, "/orders/flaky/", {}, key="k1").status_code == 201
    assert send(client, "/orders/flaky/", {}, key="k1")["Idempotent-Replayed"] == "true"
    assert writer_orders() == 1


def test_async_view_replays_from_the_writer() -> None:
    client = AsyncClient()
    post = async_to_sync(client.post)
    kwargs = {"content_type": "application/json", "headers": {"Idempotency-Key": "k1"}}
    first = post("/orders/async/", data='{"reference": "a"}', **kwargs)
    again = post("/orders/async/", data='{"reference": "a"}', **kwargs)
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert writer_orders() == 1


@needs_drf
def test_drf_view_replays_from_the_writer() -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    first = client.post("/api/plain/", {"reference": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = client.post("/api/plain/", {"reference": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert writer_orders() == 1
