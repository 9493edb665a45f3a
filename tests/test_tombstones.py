"""Tombstones (``TOMBSTONE_TTL``, docs/guarantees.md "Tombstones"): after its ``TTL`` a
completed operation's answer is gone, but a late retry is told it completed (410), never
run again, until ``TTL + TOMBSTONE_TTL``; another payload still gets 422."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from django_idempotency.conf import conf
from django_idempotency.models import IdempotencyRecord
from django_idempotency.once import KeyExpired, once
from tests.conftest import send
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def age(key: str, past_ttl: timedelta) -> None:
    """What time does to a completed record: its TTL ended ``past_ttl`` ago."""
    IdempotencyRecord.objects.filter(key=key).update(expires_at=timezone.now() - past_ttl)


def test_a_retry_after_ttl_and_purge_is_told_and_never_runs_again() -> None:
    client = Client()
    first = send(client, "/orders/", {"amount": 1}, key="k1")
    assert first.status_code == 201
    age("k1", timedelta(hours=1))
    call_command("purge_idempotency_records", verbosity=0)

    late = send(client, "/orders/", {"amount": 1}, key="k1")

    assert late.status_code == 410
    problem = json.loads(late.content)
    assert problem["type"].endswith("#idempotency-key-expired")
    record = IdempotencyRecord.objects.get(key="k1")
    assert problem["operation_id"] == str(record.pk)
    assert problem["completed_at"] == record.completed_at.isoformat()
    assert problem["response_status"] == 201
    assert Order.objects.count() == 1
    # purge emptied the answer it will never replay, and kept the rest
    assert record.response_body is None and record.response_headers == {}
    assert record.fingerprint and record.completed_at is not None


def test_another_payload_on_a_tombstone_is_still_a_422() -> None:
    client = Client()
    send(client, "/orders/", {"amount": 1}, key="k1")
    age("k1", timedelta(hours=1))
    assert send(client, "/orders/", {"amount": 2}, key="k1").status_code == 422


def test_after_the_tombstone_the_key_is_free_and_purge_deletes_it() -> None:
    client = Client()
    send(client, "/orders/", {"amount": 1}, key="k1")
    age("k1", conf.TOMBSTONE_TTL + timedelta(hours=1))
    call_command("purge_idempotency_records", verbosity=0)
    assert not IdempotencyRecord.objects.exists()
    again = send(client, "/orders/", {"amount": 1}, key="k1")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert Order.objects.count() == 2


def test_without_tombstones_a_late_retry_runs_as_a_new_operation(settings: Any) -> None:
    """TOMBSTONE_TTL 0: Stripe's behaviour, the key may be used again after TTL."""
    settings.IDEMPOTENCY = {"TOMBSTONE_TTL": timedelta(0)}
    client = Client()
    send(client, "/orders/", {"amount": 1}, key="k1")
    age("k1", timedelta(seconds=1))
    assert send(client, "/orders/", {"amount": 1}, key="k1").status_code == 201
    assert Order.objects.count() == 2


def test_purge_counts_what_it_emptied(capsys: pytest.CaptureFixture[str]) -> None:
    for number in range(3):
        IdempotencyRecordFactory(tombstone=True, key=f"t{number}", response_body=b"{}")
    IdempotencyRecordFactory(expired=True, key="gone")
    call_command("purge_idempotency_records", verbosity=1)
    out = capsys.readouterr().out
    assert "Deleted 1 expired and 0 abandoned records" in out
    assert "Emptied the stored responses of 3 tombstones" in out
    assert IdempotencyRecord.objects.filter(response_body=None).count() == 3


def test_the_status_endpoint_answers_for_a_tombstone() -> None:
    client = Client()
    send(client, "/orders/", {"amount": 1}, key="k1")
    record = IdempotencyRecord.objects.get()
    age("k1", timedelta(hours=1))
    body = json.loads(client.get(f"/idempotency/operations/{record.pk}/").content)
    assert body["tombstone"] is True and body["status"] == "completed"


def test_the_record_rules_agree() -> None:
    live = IdempotencyRecordFactory(completed=True)
    tombstone = IdempotencyRecordFactory(tombstone=True)
    gone = IdempotencyRecordFactory(expired=True)
    now = timezone.now()
    assert [r.is_tombstone(now) for r in (live, tombstone, gone)] == [False, True, False]
    assert [r.is_expired(now) for r in (live, tombstone, gone)] == [False, False, True]
    assert set(IdempotencyRecord.objects.expired()) == {gone}


def test_once_raises_key_expired_and_runs_nothing() -> None:
    IdempotencyRecordFactory(
        tombstone=True, scope="billing", key="msg:1", fingerprint=_payload_fingerprint()
    )
    with pytest.raises(KeyExpired), once("msg:1", scope="billing"):
        pytest.fail("the block must not run")


def _payload_fingerprint() -> str:
    """What ``once`` stores for a block given no payload."""
    from tests.test_once import _fingerprint_of

    return _fingerprint_of(None)


def test_a_tombstone_is_in_progress_never() -> None:
    """An IN_PROGRESS record past expires_at is not a tombstone (its lease rules it)."""
    record = IdempotencyRecordFactory(
        stuck=True,
        expires_at=timezone.now() - timedelta(hours=1),
        fingerprint=request_fingerprint(data={"amount": 1}),
    )
    assert not record.is_tombstone(timezone.now())


@pytest.mark.urls("tests.test_admin")
def test_the_admin_filters_tombstones(admin_client: Client) -> None:
    tombstone = IdempotencyRecordFactory(tombstone=True, key="t1")
    IdempotencyRecordFactory(completed=True, key="live")
    page = admin_client.get("/admin/django_idempotency/idempotencyrecord/", {"tombstone": "yes"})
    assert page.status_code == 200
    assert [record.pk for record in page.context["cl"].result_list] == [tombstone.pk]
