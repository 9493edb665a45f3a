"""Scopes: a key belongs to one principal, and a replay never crosses scopes."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client, RequestFactory, override_settings
from django.utils.crypto import salted_hmac

from django_idempotency import keys, scopes
from django_idempotency.models import IdempotencyRecord
from tests.conftest import send
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def tenant_scope(request) -> str:
    """A scope function reached through a dotted path in the tests' settings."""
    return "tenant:" + request.headers.get("X-Tenant", "none")


def long_scope(request) -> str:
    return "tenant:" + request.headers.get("X-Tenant", "none") * 300


def logged_in(username: str) -> tuple[Client, User]:
    user = User.objects.create_user(username, password="pw")
    client = Client()
    client.force_login(user)
    return client, user


def test_two_users_with_one_key_get_two_operations() -> None:
    alice_client, alice = logged_in("alice")
    bob_client, bob = logged_in("bob")
    alice_first = send(alice_client, "/orders/", {"amount": 1}, key="shared")
    bob_first = send(bob_client, "/orders/", {"amount": 1}, key="shared")
    assert alice_first.status_code == bob_first.status_code == 201
    assert "Idempotent-Replayed" not in bob_first
    assert alice_first.content != bob_first.content
    assert sorted(Order.objects.values_list("owner", flat=True)) == sorted(
        [str(alice.pk), str(bob.pk)]
    )
    assert sorted(IdempotencyRecord.objects.values_list("scope", flat=True)) == sorted(
        [f"user:{alice.pk}", f"user:{bob.pk}"]
    )

    alice_again = send(alice_client, "/orders/", {"amount": 1}, key="shared")
    bob_again = send(bob_client, "/orders/", {"amount": 1}, key="shared")
    assert alice_again.content == alice_first.content
    assert bob_again.content == bob_first.content
    assert Order.objects.count() == 2


def test_another_users_payload_under_the_same_key_is_no_mismatch() -> None:
    alice_client, _ = logged_in("alice")
    bob_client, _ = logged_in("bob")
    send(alice_client, "/orders/", {"amount": 1}, key="shared")
    assert send(bob_client, "/orders/", {"amount": 2}, key="shared").status_code == 201


def test_anonymous_requests_share_the_anonymous_scope(post) -> None:
    post("/orders/", {}, key="k1")
    assert IdempotencyRecord.objects.get().scope == "anonymous"
    other_client = Client()
    assert send(other_client, "/orders/", {}, key="k1")["Idempotent-Replayed"] == "true"


def test_logging_in_changes_the_scope(client) -> None:
    user = User.objects.create_user("carol", password="pw")
    send(client, "/orders/", {}, key="k1")
    client.force_login(user)
    response = send(client, "/orders/", {}, key="k1")
    assert "Idempotent-Replayed" not in response
    assert Order.objects.count() == 2


def test_by_user_or_session_keeps_anonymous_visitors_apart() -> None:
    first_visitor, second_visitor = Client(), Client()
    one = send(first_visitor, "/orders/session/", {}, key="k1")
    two = send(second_visitor, "/orders/session/", {}, key="k1")
    assert one.status_code == two.status_code == 201
    assert "Idempotent-Replayed" not in two
    assert Order.objects.count() == 2
    assert all(
        scope.startswith("session:")
        for scope in IdempotencyRecord.objects.values_list("scope", flat=True)
    )


def test_by_user_or_session_replays_to_the_same_visitor() -> None:
    """The visitor's first request creates the session; its cookie must reach the
    browser, or the retry arrives with a new session and runs again."""
    visitor = Client()
    first = send(visitor, "/orders/session/", {}, key="k1")
    assert first.status_code == 201
    again = send(visitor, "/orders/session/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1


def guest_scopes() -> list[str]:
    return list(IdempotencyRecord.objects.values_list("scope", flat=True))


def test_a_guests_scope_is_a_keyed_hash_never_the_session_key() -> None:
    """The session key is a bearer credential; the scope is stored, shown and signalled."""
    visitor = Client()
    send(visitor, "/orders/session/", {}, key="k1")
    session_key = visitor.session.session_key
    [scope] = guest_scopes()
    assert session_key and session_key not in scope
    assert re.fullmatch(r"session:h1:[0-9a-f]{64}", scope)
    assert len(scope) <= keys.MAX_SCOPE_LENGTH
    assert scope == scopes.session_scope(session_key)
    expected = salted_hmac(scopes._SESSION_SALT, session_key, algorithm="sha256").hexdigest()
    assert scope == "session:h1:" + expected


def test_a_guests_scope_is_stable_for_the_session_and_apart_from_others() -> None:
    before = scopes.session_scope("abc")
    assert scopes.session_scope("abc") == before
    assert scopes.session_scope("abd") != before
    with override_settings(SECRET_KEY="another-secret"):
        assert scopes.session_scope("abc") != before  # keyed: unguessable without it


def test_rotating_the_secret_key_keeps_a_guests_retry_in_its_old_scope() -> None:
    """With the old key in SECRET_KEY_FALLBACKS the retry finds the record made under it."""
    visitor = Client()
    before = scopes.session_scope("the-session")
    assert send(visitor, "/orders/session/", {}, key="k1").status_code == 201
    with override_settings(SECRET_KEY="rotated", SECRET_KEY_FALLBACKS=["tests-only"]):
        assert scopes.session_scope("the-session") != before
        again = send(visitor, "/orders/session/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert len(set(guest_scopes())) == 1


def test_by_user_or_session_prefers_the_user() -> None:
    client, user = logged_in("dave")
    send(client, "/orders/session/", {}, key="k1")
    assert IdempotencyRecord.objects.get().scope == f"user:{user.pk}"


def test_scope_functions() -> None:
    request = RequestFactory().post("/")
    assert scopes.by_user(request) == "anonymous"
    assert scopes.by_user_or_session(request) == "anonymous"  # no session middleware
    assert scopes.global_scope(request) == "global"


@override_settings(IDEMPOTENCY={"SCOPE": tenant_scope})
def test_custom_scope_callable(client) -> None:
    send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme")
    send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="globex")
    assert send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme")["Idempotent-Replayed"] == (
        "true"
    )
    assert sorted(IdempotencyRecord.objects.values_list("scope", flat=True)) == [
        "tenant:acme",
        "tenant:globex",
    ]
    assert Order.objects.count() == 2


@override_settings(IDEMPOTENCY={"SCOPE": "tests.test_scope.tenant_scope"})
def test_custom_scope_dotted_path(client) -> None:
    send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme")
    send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="globex")
    assert IdempotencyRecord.objects.filter(scope="tenant:acme").count() == 1
    assert IdempotencyRecord.objects.filter(scope="tenant:globex").count() == 1


@override_settings(IDEMPOTENCY={"SCOPE": long_scope})
def test_scope_longer_than_the_column_is_hashed_and_works(client) -> None:
    first = send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme")
    assert first.status_code == 201
    record = IdempotencyRecord.objects.get()
    assert record.scope.startswith("sha256:")
    assert len(record.scope) <= 255
    again = send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme")
    assert again["Idempotent-Replayed"] == "true"
    other = send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="globex")
    assert "Idempotent-Replayed" not in other
    assert IdempotencyRecord.objects.count() == 2
    assert Order.objects.count() == 2


@override_settings(IDEMPOTENCY={"SCOPE": tenant_scope})
def test_scopes_differing_in_a_trailing_space_stay_apart(client) -> None:
    """MariaDB's PAD SPACE collations compare "acme " equal to "acme"."""
    send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme")
    other = send(client, "/orders/", {}, key="k1", HTTP_X_TENANT="acme ")
    assert other.status_code == 201
    assert "Idempotent-Replayed" not in other
    assert Order.objects.count() == 2
