"""The hot path's own SQL (``django_idempotency.sql``) agrees with the ORM, per backend.

Claim, lookup and finalize bypass the ORM's query building; whatever they write, the
ORM must read back unchanged, and whatever the ORM wrote, ``lookup`` must read as the
ORM does: same types, microseconds, time zones, JSON and bytes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_idempotency.models import IdempotencyRecord, Status
from tests.factories import IdempotencyRecordFactory

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = timedelta(seconds=90, microseconds=123)
TTL = timedelta(hours=1)


def fields(record: IdempotencyRecord) -> dict[str, object]:
    return {field.attname: getattr(record, field.attname) for field in record._meta.concrete_fields}


def claim(key: str = "k1", **kwargs: object) -> tuple[IdempotencyRecord | None, bool]:
    """``(record, created)`` of ``claim()``; the database time it read is dropped."""
    values: dict[str, object] = {
        "scope": "user:1",
        "key": key,
        "fingerprint": "f" * 64,
        "method": "POST",
        "route": "/orders/",
        "lease": LEASE,
        "ttl": TTL,
    }
    values.update(kwargs)
    found = IdempotencyRecord.objects.claim(**values)  # type: ignore[arg-type]
    return found.record, found.created


def test_a_claimed_record_reads_back_through_the_orm_unchanged() -> None:
    record, created = claim()
    assert created and record is not None
    stored = IdempotencyRecord.objects.get(pk=record.pk)
    assert fields(stored) == fields(record)
    assert record.locked_until is not None
    if connection.vendor != "sqlite":  # SQLite's clock has milliseconds
        assert record.locked_until.microsecond != 0
    assert stored.status == Status.IN_PROGRESS and stored.response_headers == {}


def test_a_taken_key_returns_the_record_as_the_orm_reads_it() -> None:
    existing = IdempotencyRecordFactory(completed=True, scope="user:1", key="k1")
    record, created = claim()
    assert not created and record is not None
    assert fields(record) == fields(IdempotencyRecord.objects.get(pk=existing.pk))
    assert isinstance(record.pk, uuid.UUID) and record.created_at.tzinfo is not None


def test_finalize_writes_what_the_orm_reads() -> None:
    record, _ = claim()
    assert record is not None
    body = b"\x00\xff binary \xe2\x82\xac"
    headers = {"Content-Type": "application/json", "X-Note": "caf\u00e9"}
    assert IdempotencyRecord.objects.finalize(
        record, status=201, headers=headers, body=body, ttl=TTL
    )
    stored = IdempotencyRecord.objects.get(pk=record.pk)
    assert fields(stored) == fields(record)
    assert bytes(stored.response_body) == body and stored.response_headers == headers
    assert stored.status == Status.COMPLETED and stored.locked_until is None
    assert stored.completed_at is not None and stored.completed_at <= timezone.now()


def test_finalize_and_lock_are_fenced_by_the_lease_token() -> None:
    record, _ = claim()
    assert record is not None
    stale = IdempotencyRecord.objects.get(pk=record.pk)
    stale.lease_token = uuid.uuid4()
    records = IdempotencyRecord.objects.all()
    assert not records.lock(stale, nowait=True)
    assert not records.finalize(stale, status=201, headers={}, body=b"", ttl=TTL)
    assert records.lock(record, nowait=True)
    assert IdempotencyRecord.objects.get(pk=record.pk).status == Status.IN_PROGRESS


def test_a_bounded_claim_stores_the_same_record() -> None:
    """The bounded form (PostgreSQL: INSERT ... SELECT that sets lock_timeout) too."""
    from django.db import transaction

    with transaction.atomic():
        record, created = claim(wait=timedelta(seconds=2))
        assert created and record is not None
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SHOW lock_timeout")
                assert cursor.fetchone()[0] == "2s"
    assert fields(IdempotencyRecord.objects.get(pk=record.pk)) == fields(record)


def test_lookup_misses_cleanly() -> None:
    assert IdempotencyRecord.objects.lookup("user:1", "nope") is None


def test_backends_without_insert_ignore_claim_through_the_orm(monkeypatch) -> None:
    """A backend that cannot ignore conflicts (Oracle) claims with an INSERT that may fail."""
    from django_idempotency.sql import statements

    monkeypatch.setattr(statements(IdempotencyRecord, connection), "supports_ignore", False)
    record, created = claim()
    assert created and record is not None
    assert fields(IdempotencyRecord.objects.get(pk=record.pk)) == fields(record)
    again, created = claim()
    assert not created and again is not None and again.pk == record.pk
