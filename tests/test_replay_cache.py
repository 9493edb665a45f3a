"""The replay cache (``REPLAY_CACHE``, docs/reference/settings.md#replay_cache): a replay
answered from Django's cache without a query, never for another scope or payload, and
never trusted for "not done yet"."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.db import connection, transaction
from django.test import Client

from django_idempotency import encryption
from django_idempotency.models import IdempotencyRecord
from tests.conftest import send
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "replays"}


def warm(client: Client, key: str) -> None:
    """MySQL/MariaDB cannot return the expiry they computed with the finalize, so a first
    response is cached on its first replay (read from the database) instead."""
    if connection.vendor == "mysql":
        assert send(client, "/orders/", {"amount": 1}, key=key)["Idempotent-Replayed"] == "true"


@pytest.fixture
def replays(settings: Any) -> Any:
    settings.CACHES = {**settings.CACHES, "replays": LOCMEM}
    settings.IDEMPOTENCY = {"REPLAY_CACHE": "replays"}
    caches["replays"].clear()
    yield caches["replays"]
    caches["replays"].clear()


def test_a_replay_from_the_cache_costs_no_query(replays, django_assert_num_queries) -> None:
    client = Client()
    first = send(client, "/orders/", {"amount": 1}, key="k1")
    assert first.status_code == 201
    warm(client, "k1")
    with django_assert_num_queries(0):
        again = send(client, "/orders/", {"amount": 1}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again["Idempotency-Expires"] == first["Idempotency-Expires"]
    assert Order.objects.count() == 1


def test_another_scope_never_gets_the_cached_replay(replays) -> None:
    alice, bob = Client(), Client()
    alice.force_login(User.objects.create_user("alice"))
    bob.force_login(User.objects.create_user("bob"))
    assert send(alice, "/orders/", {"amount": 1}, key="k1").status_code == 201
    theirs = send(bob, "/orders/", {"amount": 1}, key="k1")
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs
    assert Order.objects.count() == 2


def test_another_payload_is_left_to_the_database(replays) -> None:
    client = Client()
    send(client, "/orders/", {"amount": 1}, key="k1")
    assert send(client, "/orders/", {"amount": 2}, key="k1").status_code == 422


def test_a_record_that_rolled_back_is_never_cached(replays) -> None:
    """Inside someone's transaction the record commits with it, or not at all."""
    client = Client()
    with transaction.atomic():
        assert send(client, "/orders/", {"amount": 1}, key="k1").status_code == 201
        transaction.set_rollback(True)
    assert not IdempotencyRecord.objects.exists()
    again = send(client, "/orders/", {"amount": 1}, key="k1")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert Order.objects.count() == 1


def test_a_failing_cache_falls_back_to_the_database(replays, monkeypatch) -> None:
    client = Client()
    first = send(client, "/orders/", {"amount": 1}, key="k1")

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("cache down")

    monkeypatch.setattr(replays, "get", down)
    monkeypatch.setattr(replays, "set", down)
    again = send(client, "/orders/", {"amount": 1}, key="k1")
    assert again["Idempotent-Replayed"] == "true" and again.content == first.content
    assert send(client, "/orders/", {"amount": 1}, key="k2").status_code == 201


def test_the_cache_holds_what_the_record_holds(replays, settings) -> None:
    from cryptography.fernet import Fernet

    settings.IDEMPOTENCY = {"REPLAY_CACHE": "replays", "ENCRYPTION_KEYS": [Fernet.generate_key()]}
    client = Client()
    first = send(client, "/orders/", {"amount": 1}, key="k1")
    warm(client, "k1")
    [entry] = [value for value in replays._cache.values()]  # pickled
    assert first.content not in entry
    record = IdempotencyRecord.objects.get()
    assert encryption.is_encrypted(record.response_headers)
    assert send(client, "/orders/", {"amount": 1}, key="k1").content == first.content


def _redis_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


def test_through_redis(settings, django_assert_num_queries) -> None:
    """Django's own RedisCache, against the local Redis (CI starts it)."""
    if not _redis_answers():
        if os.environ.get("CI"):
            pytest.fail("Redis does not answer on 127.0.0.1:6379")
        pytest.skip("Redis does not answer on 127.0.0.1:6379")
    settings.CACHES = {
        **settings.CACHES,
        "replays": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:6379/9",
        },
    }
    settings.IDEMPOTENCY = {"REPLAY_CACHE": "replays"}
    caches["replays"].clear()
    client = Client()
    first = send(client, "/orders/", {"amount": 1}, key="k-redis")
    warm(client, "k-redis")
    with django_assert_num_queries(0):
        again = send(client, "/orders/", {"amount": 1}, key="k-redis")
    assert again["Idempotent-Replayed"] == "true" and again.content == first.content
    caches["replays"].clear()
