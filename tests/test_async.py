"""``@idempotent`` on an ``async def`` view: the same contract, through the async and
the sync client; claim, view and finalize run in one thread-sensitive call."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncClient, Client

from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import send
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp import views
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def apost(client: AsyncClient, path: str, data: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key is not None else {}
    call = async_to_sync(client.post)
    return call(path, data=json.dumps(data), content_type="application/json", headers=headers)


def test_async_client_first_request_and_replay(async_client) -> None:
    first = apost(async_client, "/orders/async/", {"reference": "a"}, key="k1")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    again = apost(async_client, "/orders/async/", {"reference": "a"}, key="k1")
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED


def test_sync_client_on_the_async_view(client) -> None:
    first = send(client, "/orders/async/", {"reference": "a"}, key="k1")
    again = send(client, "/orders/async/", {"reference": "a"}, key="k1")
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1


def test_async_and_sync_clients_share_the_record(async_client, client) -> None:
    first = apost(async_client, "/orders/async/", {"reference": "a"}, key="k1")
    again = send(client, "/orders/async/", {"reference": "a"}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content


def test_async_mismatch_is_422(async_client) -> None:
    apost(async_client, "/orders/async/", {"reference": "a"}, key="k1")
    response = apost(async_client, "/orders/async/", {"reference": "b"}, key="k1")
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert Order.objects.count() == 1


def test_async_in_progress_is_409(async_client) -> None:
    IdempotencyRecordFactory(
        key="k1", fingerprint=request_fingerprint(path="/orders/async/", data={"reference": "a"})
    )
    response = apost(async_client, "/orders/async/", {"reference": "a"}, key="k1")
    assert response.status_code == 409
    assert int(response["Retry-After"]) >= 1
    assert "operation" in response.json()
    assert Order.objects.count() == 0


def test_async_malformed_and_missing_keys(async_client, settings) -> None:
    bad = apost(async_client, "/orders/async/", {}, key="a, b")
    assert bad.status_code == 400
    assert bad.json()["type"].endswith("idempotency-key-invalid")
    settings.IDEMPOTENCY = {"REQUIRED": True}
    missing = apost(async_client, "/orders/async/", {})
    assert missing.status_code == 400
    assert missing.json()["type"].endswith("idempotency-key-missing")
    assert Order.objects.count() == 0


def test_async_optional_missing_key_runs_unguarded(async_client) -> None:
    apost(async_client, "/orders/async/", {})
    apost(async_client, "/orders/async/", {})
    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


def test_async_get_passes_through(async_client) -> None:
    response = async_to_sync(async_client.get)("/orders/async/", headers={"Idempotency-Key": "k"})
    assert response.status_code == 201  # the test view answers every method alike
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", ["raise", "500", "503"])
@pytest.mark.parametrize("client_kind", ["async", "sync"])
def test_failing_async_view_releases_its_key(failure: str, client_kind: str) -> None:
    if client_kind == "async":
        client = AsyncClient(raise_request_exception=False)

        def call(data):
            return apost(client, "/orders/async/flaky/", data, key="k1")
    else:
        sync_client = Client(raise_request_exception=False)

        def call(data):
            return send(sync_client, "/orders/async/flaky/", data, key="k1")

    views.CONTROL["fail"] = failure
    response = call({"reference": "a"})
    assert response.status_code == (500 if failure == "raise" else int(failure))
    assert Order.objects.count() == 0  # the async view's write rolled back with the rest
    assert IdempotencyRecord.objects.count() == 0

    views.CONTROL["fail"] = None
    retry = call({"reference": "a"})
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert call({"reference": "a"})["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_async_view_under_atomic_requests(monkeypatch) -> None:
    """Django refuses ATOMIC_REQUESTS on async views unless they opt out; ours do."""
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    client = AsyncClient(raise_request_exception=True)
    first = apost(client, "/orders/async/", {"reference": "a"}, key="k1")
    assert first.status_code == 201
    again = apost(client, "/orders/async/", {"reference": "a"}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    sync_first = send(Client(), "/orders/async/", {"reference": "b"}, key="k2")
    assert sync_first.status_code == 201
    assert Order.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_async_view_takes_over_a_dead_lease(async_client) -> None:
    stuck = IdempotencyRecordFactory(
        stuck=True,
        key="k1",
        fingerprint=request_fingerprint(path="/orders/async/", data={"reference": "a"}),
    )
    response = apost(async_client, "/orders/async/", {"reference": "a"}, key="k1")
    assert response.status_code == 201
    record = IdempotencyRecord.objects.get()
    assert (record.pk, record.attempts, record.status) == (stuck.pk, 2, Status.COMPLETED)
