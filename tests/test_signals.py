"""Each signal is sent once, at its moment, with sender, record, scope, key (+ reason)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path
from django.utils import timezone

from django_idempotency import signals
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet, Status
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

SIGNALS = {
    "started": signals.operation_started,
    "completed": signals.operation_completed,
    "replayed": signals.operation_replayed,
    "conflict": signals.operation_conflict,
}


def _order(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    order = Order.objects.create(reference=str(payload.get("reference", "")))
    return JsonResponse({"id": order.pk}, status=201)


@idempotent
def two_phase(request: HttpRequest) -> HttpResponse:
    return _order(request)


@idempotent(single_transaction=True)
def single(request: HttpRequest) -> HttpResponse:
    return _order(request)


@idempotent(atomic=False)
def outside(request: HttpRequest) -> HttpResponse:
    return _order(request)


@idempotent
def steals_its_own_lease(request: HttpRequest) -> HttpResponse:
    """A retry takes the lease over while this attempt runs."""
    operation = request.idempotency  # type: ignore[attr-defined]
    IdempotencyRecord.objects.filter(pk=operation.id).update(lease_token=uuid.uuid4())
    return _order(request)


@idempotent(atomic=False)
def outside_loses_its_lease(request: HttpRequest) -> HttpResponse:
    """A retry takes the lease over before this atomic=False attempt's checkpoint."""
    operation = request.idempotency  # type: ignore[attr-defined]
    IdempotencyRecord.objects.filter(pk=operation.id).update(lease_token=uuid.uuid4())
    operation.checkpoint("charged")
    return _order(request)


@idempotent
def broken(request: HttpRequest) -> HttpResponse:
    _order(request)
    raise ZeroDivisionError


urlpatterns = [
    path("broken/", broken),
    path("outside-loses-lease/", outside_loses_its_lease),
    path("two-phase/", two_phase),
    path("single/", single),
    path("outside/", outside),
    path("steal/", steals_its_own_lease),
]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.test_signals")]


class Sent(list[tuple[str, dict[str, Any]]]):
    def names(self) -> list[str]:
        return [name for name, _kwargs in self]

    def only(self, name: str) -> dict[str, Any]:
        [kwargs] = [kwargs for sent, kwargs in self if sent == name]
        return kwargs


@pytest.fixture
def sent() -> Iterator[Sent]:
    caught = Sent()
    receivers = {}
    for name, signal in SIGNALS.items():

        def receiver(signal: Any, name: str = name, **kwargs: Any) -> None:
            caught.append((name, kwargs))

        receivers[name] = receiver
        signal.connect(receiver, weak=False)
    yield caught
    for name, signal in SIGNALS.items():
        signal.disconnect(receivers[name])


def post(client: Client, url: str, key: str | None, data: Any = None) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(url, json.dumps(data or {}), content_type="application/json", **headers)


class TestStartedAndCompleted:
    def test_first_request(self, client, sent):
        response = post(client, "/two-phase/", "k1")
        assert response.status_code == 201
        assert sent.names() == ["started", "completed"]
        record = IdempotencyRecord.objects.get()
        for _name, kwargs in sent:
            assert set(kwargs) == {"sender", "record", "scope", "key"}
            assert kwargs["sender"] is IdempotencyRecord
            assert kwargs["record"].pk == record.pk
            assert kwargs["scope"] == "anonymous"
            assert kwargs["key"] == "k1"
        assert sent.only("completed")["record"].status == Status.COMPLETED
        assert sent.only("completed")["record"].response_status == 201

    def test_scope_is_the_users(self, sent):
        user = User.objects.create_user("alice")
        client = Client()
        client.force_login(user)
        post(client, "/two-phase/", "k1")
        assert {kwargs["scope"] for _name, kwargs in sent} == {f"user:{user.pk}"}

    def test_started_before_the_view_with_the_claim_committed(self, client):
        seen: dict[str, Any] = {}

        def on_started(record: IdempotencyRecord, **kwargs: Any) -> None:
            seen["orders"] = Order.objects.count()
            seen["status"] = record.status
            seen["in_transaction"] = connection.in_atomic_block
            seen["stored"] = IdempotencyRecord.objects.filter(pk=record.pk).exists()

        signals.operation_started.connect(on_started, weak=False)
        try:
            post(client, "/two-phase/", "k1")
        finally:
            signals.operation_started.disconnect(on_started)
        assert seen == {
            "orders": 0,
            "status": Status.IN_PROGRESS,
            "in_transaction": False,
            "stored": True,
        }

    def test_completed_after_the_writes_committed_with_the_record(self, client):
        seen: dict[str, Any] = {}

        def on_completed(record: IdempotencyRecord, **kwargs: Any) -> None:
            seen["orders"] = Order.objects.count()
            seen["in_transaction"] = connection.in_atomic_block
            seen["stored_status"] = IdempotencyRecord.objects.get(pk=record.pk).status

        signals.operation_completed.connect(on_completed, weak=False)
        try:
            post(client, "/two-phase/", "k1")
        finally:
            signals.operation_completed.disconnect(on_completed)
        assert seen == {"orders": 1, "in_transaction": False, "stored_status": Status.COMPLETED}

    @pytest.mark.parametrize("url", ["/single/", "/outside/"])
    def test_other_modes(self, client, sent, url):
        assert post(client, url, "k1").status_code == 201
        assert sent.names() == ["started", "completed"]
        assert sent.only("completed")["record"].status == Status.COMPLETED

    def test_take_over_is_a_start_with_a_later_attempt(self, client, sent):
        stuck = IdempotencyRecordFactory(
            key="k1",
            fingerprint=request_fingerprint(path="/two-phase/", data={}),
            locked_until=timezone.now() - timedelta(seconds=1),
        )
        assert post(client, "/two-phase/", "k1").status_code == 201
        assert sent.names() == ["started", "completed"]
        started = sent.only("started")["record"]
        assert started.pk == stuck.pk
        assert started.attempts == 2

    def test_nothing_without_a_key_or_for_safe_methods(self, client, sent):
        post(client, "/two-phase/", None)
        client.get("/two-phase/", HTTP_IDEMPOTENCY_KEY="k1")
        assert sent == []

    def test_failed_attempt_starts_but_never_completes(self, client, sent):
        with pytest.raises(ZeroDivisionError):
            post(client, "/broken/", "k1")
        assert sent.names() == ["started"]
        assert not IdempotencyRecord.objects.exists()


class TestReplayed:
    def test_retry(self, client, sent):
        first = post(client, "/two-phase/", "k1")
        sent.clear()
        retry = post(client, "/two-phase/", "k1")
        assert retry.content == first.content
        assert sent.names() == ["replayed"]
        kwargs = sent.only("replayed")
        assert kwargs["sender"] is IdempotencyRecord
        assert kwargs["record"] == IdempotencyRecord.objects.get()
        assert (kwargs["scope"], kwargs["key"]) == ("anonymous", "k1")
        assert Order.objects.count() == 1


class TestConflict:
    def test_in_progress(self, client, sent):
        running = IdempotencyRecordFactory(
            key="k1", fingerprint=request_fingerprint(path="/two-phase/", data={})
        )
        assert post(client, "/two-phase/", "k1").status_code == 409
        assert sent.names() == ["conflict"]
        kwargs = sent.only("conflict")
        assert kwargs["reason"] == "in_progress"
        assert kwargs["record"].pk == running.pk
        assert (kwargs["scope"], kwargs["key"], kwargs["sender"]) == (
            "anonymous",
            "k1",
            IdempotencyRecord,
        )

    def test_mismatch(self, client, sent):
        post(client, "/two-phase/", "k1", {"reference": "a"})
        sent.clear()
        assert post(client, "/two-phase/", "k1", {"reference": "b"}).status_code == 422
        kwargs = sent.only("conflict")
        assert sent.names() == ["conflict"]
        assert kwargs["reason"] == "mismatch"
        assert kwargs["record"] == IdempotencyRecord.objects.get()

    def test_lease_lost(self, client, sent):
        assert post(client, "/steal/", "k1").status_code == 409
        assert sent.names() == ["started", "conflict"]
        kwargs = sent.only("conflict")
        assert kwargs["reason"] == "lease_lost"
        assert kwargs["record"].pk == sent.only("started")["record"].pk
        assert Order.objects.count() == 0

    def test_lease_lost_at_an_atomic_false_checkpoint(self, client, sent):
        assert post(client, "/outside-loses-lease/", "k1").status_code == 409
        assert sent.names() == ["started", "conflict"]
        assert sent.only("conflict")["reason"] == "lease_lost"

    def test_lock(self, client, sent, monkeypatch):
        def locked(self: Any, **kwargs: Any) -> None:
            raise OperationalError("database is locked")

        monkeypatch.setattr(IdempotencyRecordQuerySet, "claim", locked)
        assert post(client, "/two-phase/", "k1").status_code == 409
        assert sent.names() == ["conflict"]
        kwargs = sent.only("conflict")
        assert kwargs["reason"] == "lock"
        assert kwargs["record"] is None
        assert (kwargs["scope"], kwargs["key"]) == ("anonymous", "k1")
