"""factory-boy factories for idempotency records.

``IdempotencyRecordFactory()`` is an IN_PROGRESS record with a live lease; the traits
give the other states the engine must recognise::

    IdempotencyRecordFactory(completed=True)   # replayable, stored 201 JSON response
    IdempotencyRecordFactory(expired=True)     # COMPLETED, past expires_at: counts as absent
    IdempotencyRecordFactory(stuck=True)       # IN_PROGRESS, lease ran out: a retry takes over

``request_fingerprint(...)`` computes the fingerprint the guard would compute for a
request, so a factory record can stand for "the same request, seen earlier".
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import factory
from django.test import RequestFactory
from django.utils import timezone
from factory.django import DjangoModelFactory

from django_idempotency import keys
from django_idempotency.conf import conf
from django_idempotency.models import IdempotencyRecord, Status

LEASE = timedelta(seconds=90)
TTL = timedelta(hours=24)


def request_fingerprint(
    method: str = "POST",
    path: str = "/orders/",
    data: Any = None,
    content_type: str = "application/json",
) -> str:
    """The fingerprint of ``method path`` with ``data`` (a dict is sent as JSON)."""
    if isinstance(data, (dict, list)):
        body: Any = json.dumps(data)
    else:
        body = data if data is not None else ""
    request = RequestFactory().generic(method, path, data=body, content_type=content_type)
    return keys.fingerprint(request)


class IdempotencyRecordFactory(DjangoModelFactory[IdempotencyRecord]):
    class Meta:
        model = IdempotencyRecord

    scope = "anonymous"
    key = factory.Sequence(lambda n: f"factory-key-{n}")
    fingerprint = factory.LazyFunction(lambda: request_fingerprint(data={}))
    status = Status.IN_PROGRESS
    method = "POST"
    route = "/orders/"
    lease_token = factory.LazyFunction(uuid.uuid4)
    created_at = factory.LazyFunction(timezone.now)
    locked_until = factory.LazyAttribute(lambda record: record.created_at + LEASE)
    expires_at = factory.LazyAttribute(lambda record: record.created_at + TTL)
    attempts = 1

    class Params:
        completed = factory.Trait(
            status=Status.COMPLETED,
            locked_until=None,
            completed_at=factory.LazyAttribute(lambda record: record.created_at),
            response_status=201,
            response_headers={"Content-Type": "application/json", "Location": "/orders/1/"},
            response_body=b'{"id": 1, "amount": 0}',
        )
        # Expired and past its tombstone too: the key is free again.
        expired = factory.Trait(
            completed=True,
            created_at=factory.LazyFunction(
                lambda: timezone.now() - TTL - conf.TOMBSTONE_TTL - timedelta(hours=1)
            ),
        )
        # Expired within TOMBSTONE_TTL: the answer is gone, the key still taken.
        tombstone = factory.Trait(
            completed=True,
            created_at=factory.LazyFunction(lambda: timezone.now() - TTL - timedelta(hours=1)),
        )
        stuck = factory.Trait(
            status=Status.IN_PROGRESS,
            created_at=factory.LazyFunction(lambda: timezone.now() - LEASE - timedelta(seconds=5)),
        )
