"""A record past its ``expires_at`` counts as absent, unless its attempt still holds the
lease; ``ttl`` (default or per view) sets when that is."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from django_idempotency.models import IdempotencyRecord
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


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


def test_per_view_ttl(post) -> None:
    post("/orders/short/", {}, key="k1")
    record = IdempotencyRecord.objects.get(key="k1")
    assert record.expires_at - record.completed_at == timedelta(minutes=5)
