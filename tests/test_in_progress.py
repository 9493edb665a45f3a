"""A key whose attempt still holds its lease: 409 with ``Retry-After`` and the status
link, after waiting up to ``WAIT`` for the attempt to finish or go."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import assert_problem
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


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
