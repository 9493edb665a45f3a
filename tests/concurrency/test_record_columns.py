"""Values that do not fit the record's columns must not be cut silently.

MySQL's ``INSERT IGNORE`` (the claim) turns "data too long" into a warning and stores
a truncated value; a retry then never matches its own record. PostgreSQL refuses the
insert instead, which would answer every request with 503.
"""

from __future__ import annotations

import uuid

import pytest

from django_idempotency.models import IdempotencyRecord
from tests.concurrency.threads import send
from tests.testapp.models import Order

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_a_long_custom_fingerprint_still_replays_and_still_detects_misuse() -> None:
    key = f"long-{uuid.uuid4()}"
    first = send("/race/long-fingerprint/", key)
    assert first.status == 201
    again = send("/race/long-fingerprint/", key)
    assert (again.status, again.replayed, again.body) == (201, True, first.body)
    other = send("/race/long-fingerprint/", key, {"reference": key, "amount": 2})
    assert other.status == 422
    assert Order.objects.filter(reference=key).count() == 1
    assert len(IdempotencyRecord.objects.get(key=key).fingerprint) <= 64
