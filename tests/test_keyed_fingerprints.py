"""Fingerprints are HMACs keyed by ``SECRET_KEY``; rotation and the upgrade keep matching.

A plain SHA-256 of a low-entropy body (a card number, an amount) can be reversed by
brute force from a dump of the table. The record therefore stores an HMAC under
``SECRET_KEY``; a retry after a rotation still matches through ``SECRET_KEY_FALLBACKS``,
and a record the previous version stored (the unkeyed digest) still matches too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from django.test import Client, RequestFactory, override_settings

from django_idempotency import keys, scopes
from django_idempotency.models import IdempotencyRecord
from django_idempotency.once import KeyReused, _fingerprint, once
from tests.conftest import send
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db

OLD, NEW = "the-old-secret", "the-new-secret"
CARD = {"card": "4242", "amount": 1}


def _request(data: Any = CARD, path: str = "/orders/") -> Any:
    return RequestFactory().post(path, data=json.dumps(data), content_type="application/json")


def _stored(value: str, secret: str) -> str:
    """The stored form, computed as Django's ``salted_hmac`` documents it, not by our code."""
    key = hashlib.sha256(b"django_idempotency.keys.fingerprint" + secret.encode()).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_the_same_request_has_the_same_keyed_fingerprint() -> None:
    assert keys.fingerprints(keys.fingerprint(_request())) == keys.fingerprints(
        keys.fingerprint(_request())
    )


def test_another_secret_key_gives_another_fingerprint() -> None:
    raw = keys.fingerprint(_request())
    with override_settings(SECRET_KEY=OLD):
        old, _ = keys.fingerprints(raw)
    with override_settings(SECRET_KEY=NEW):
        new, _ = keys.fingerprints(raw)
    assert old != new
    assert old == _stored(raw, OLD) and new == _stored(raw, NEW)


@override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=["a", OLD])
def test_the_earlier_forms_are_each_fallback_then_the_unkeyed_one() -> None:
    raw = keys.fingerprint(_request())
    current, earlier = keys.fingerprints(raw)
    assert current == _stored(raw, NEW)
    assert earlier == (_stored(raw, "a"), _stored(raw, OLD), raw)


def test_a_dumped_record_does_not_hold_a_plain_digest_of_the_body(client: Client) -> None:
    body = json.dumps(CARD)
    assert send(client, "/orders/", body, key="k-1").status_code == 201
    stored = IdempotencyRecord.objects.get(key="k-1").fingerprint
    unkeyed = {
        hashlib.sha256(body.encode()).hexdigest(),
        hashlib.sha256(
            json.dumps(CARD, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest(),
        keys.fingerprint(_request()),  # the previous version's column
    }
    assert stored not in unkeyed
    assert stored == _stored(keys.fingerprint(_request()), "tests-only")
    assert len(stored) == 64


def test_a_custom_fingerprint_is_keyed_too(client: Client) -> None:
    """A custom function's answer is stored as its HMAC, fitted to the column."""
    assert send(client, "/orders/loose/", CARD, key="k-1").status_code == 201
    stored = IdempotencyRecord.objects.get(key="k-1").fingerprint
    assert stored != "the same for every request"
    assert stored == _stored("the same for every request", "tests-only")


def test_a_custom_fingerprint_longer_than_the_column_is_keyed_and_fits(client: Client) -> None:
    assert send(client, "/race/long-fingerprint/", CARD, key="k-1").status_code == 201
    stored = IdempotencyRecord.objects.get(key="k-1").fingerprint
    assert len(stored) == 64
    assert send(client, "/race/long-fingerprint/", CARD, key="k-1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_a_record_made_under_the_old_key_replays_after_a_rotation(client: Client) -> None:
    with override_settings(SECRET_KEY=OLD):
        first = send(client, "/orders/", CARD, key="k-1")
    assert first.status_code == 201
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        retry = send(client, "/orders/", CARD, key="k-1")
        other = send(client, "/orders/", {**CARD, "amount": 2}, key="k-1")
    assert retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert other.status_code == 422  # the fallback does not blur what "the same" means
    assert Order.objects.count() == 1


def test_without_the_old_key_in_the_fallbacks_the_retry_is_a_422(client: Client) -> None:
    """Documented: drop a key from SECRET_KEY_FALLBACKS only once TTL has passed."""
    with override_settings(SECRET_KEY=OLD):
        assert send(client, "/orders/", CARD, key="k-1").status_code == 201
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[]):
        retry = send(client, "/orders/", CARD, key="k-1")
    assert retry.status_code == 422
    assert Order.objects.count() == 1


def test_a_record_the_previous_version_stored_still_replays(client: Client) -> None:
    """Records written before the upgrade hold the unkeyed digest; they stay the same intent."""
    legacy = IdempotencyRecordFactory(
        completed=True, key="k-1", fingerprint=request_fingerprint(data=CARD)
    )
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        retry = send(client, "/orders/", CARD, key="k-1")
        other = send(client, "/orders/", {**CARD, "amount": 2}, key="k-1")
    assert retry.status_code == legacy.response_status
    assert retry["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert not Order.objects.exists()


def test_a_legacy_record_of_a_custom_fingerprint_still_replays(client: Client) -> None:
    """The previous version stored a custom function's answer as it was (fitted)."""
    IdempotencyRecordFactory(completed=True, key="k-1", fingerprint="the same for every request")
    retry = send(client, "/orders/loose/", CARD, key="k-1")
    assert retry["Idempotent-Replayed"] == "true"
    assert not Order.objects.exists()


def test_once_keys_its_payload_fingerprint_and_matches_across_a_rotation() -> None:
    with override_settings(SECRET_KEY=OLD):
        with once("msg:1", scope="billing", payload=CARD) as run:
            assert run.first
            run.result = "charged"
        stored = IdempotencyRecord.objects.get(key="msg:1").fingerprint
        assert stored == _fingerprint(CARD)
    assert stored != hashlib.sha256(json.dumps(CARD).encode()).hexdigest()
    assert stored != keys.digest({"payload": CARD})  # the previous version's column
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        with once("msg:1", scope="billing", payload=CARD) as run:
            assert not run.first
            assert run.result == "charged"
        with pytest.raises(KeyReused), once("msg:1", scope="billing", payload={"card": "1"}):
            pytest.fail("another payload must not run")
    with (
        override_settings(SECRET_KEY=NEW),
        pytest.raises(KeyReused),
        once("msg:1", scope="billing", payload=CARD),
    ):
        pytest.fail("without the fallback the old record is another payload")


def test_once_matches_a_record_the_previous_version_stored() -> None:
    legacy = keys.digest({"payload": CARD})
    IdempotencyRecordFactory(completed=True, scope="billing", key="msg:1", fingerprint=legacy)
    with once("msg:1", scope="billing", payload=CARD) as run:
        assert not run.first
        assert run.result == {"id": 1, "amount": 0}


def _hook_keys() -> list[str]:
    return list(IdempotencyRecord.objects.values_list("key", flat=True))


def test_a_payload_hash_key_is_the_same_under_every_secret() -> None:
    """The key is what the unique index deduplicates on: keyed by ``SECRET_KEY`` it would
    split one redelivery into two records during a rolling deploy or a rotation."""
    request = _request({"event": "paid"}, path="/hooks/")
    legacy = "payload:" + keys.digest({"route": "/hooks/", "body": keys._canonical_body(request)})
    with override_settings(SECRET_KEY=OLD):
        assert keys.payload_hash(request) == legacy


def test_a_redelivery_after_a_rotation_finds_the_payload_hash_record() -> None:
    with override_settings(SECRET_KEY=OLD):
        assert send(Client(), "/hooks/", {"event": "paid"}).status_code == 201
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        again = send(Client(), "/hooks/", {"event": "paid"})
        other = send(Client(), "/hooks/", {"event": "refunded"})
    assert again["Idempotent-Replayed"] == "true"
    assert other.status_code == 201 and "Idempotent-Replayed" not in other
    assert Order.objects.count() == 2


def test_a_guests_retry_after_a_rotation_finds_its_record() -> None:
    visitor = Client()
    with override_settings(SECRET_KEY=OLD):
        first = send(visitor, "/orders/session/", CARD, key="k-1")
        assert first.status_code == 201
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        again = send(visitor, "/orders/session/", CARD, key="k-1")
        other_key = send(visitor, "/orders/session/", CARD, key="k-2")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert "Idempotent-Replayed" not in other_key
    assert Order.objects.count() == 2
    session_key = visitor.session.session_key
    with override_settings(SECRET_KEY=NEW):
        current = scopes.session_scope(session_key)
    assert set(IdempotencyRecord.objects.values_list("key", "scope")) == {
        ("k-1", scopes.session_scope(session_key, OLD)),
        ("k-2", current),
    }


def test_without_the_fallback_a_guests_retry_is_a_new_scope() -> None:
    visitor = Client()
    with override_settings(SECRET_KEY=OLD):
        assert send(visitor, "/orders/session/", CARD, key="k-1").status_code == 201
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[]):
        again = send(visitor, "/orders/session/", CARD, key="k-1")
    assert "Idempotent-Replayed" not in again
    assert Order.objects.count() == 2
