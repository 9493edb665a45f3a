"""Security is correctness: replays never cross scopes, the status endpoint reveals
nothing about other scopes, private and hop-by-hop headers are never stored or
replayed, keys are only looked up through the (scope, key) index, and the admin is
closed to non-staff users.

Example counts follow ``FUZZ_EXAMPLES`` / ``HYPOTHESIS_PROFILE=full`` like test_fuzz.py.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import django_idempotency
from django_idempotency import signals
from django_idempotency.conf import conf
from django_idempotency.models import IdempotencyRecord, Status
from django_idempotency.scopes import session_scope
from tests.conftest import needs_drf
from tests.testapp.fuzz_views import PRIVATE_HEADERS
from tests.testapp.models import Order
from tests.urls import urlpatterns as test_urlpatterns

# These tests also need the admin, which tests/urls.py does not mount.
urlpatterns = [path("admin/", admin.site.urls), *test_urlpatterns]

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.test_security")]

FULL = os.environ.get("HYPOTHESIS_PROFILE") == "full"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (3000 if FULL else 100))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not FULL,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PRIVATE = {
    "set-cookie",
    "date",
    "authorization",
    "www-authenticate",
    "proxy-authenticate",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-csrftoken",
}


@pytest.fixture(autouse=True)
def quiet_request_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="django.request")


def reset() -> None:
    IdempotencyRecord.objects.all().delete()
    Order.objects.all().delete()


def post(client: Client, url: str, key: str, body: Any = None, **extra: Any) -> Any:
    return client.post(
        url,
        data=json.dumps(body if body is not None else {}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
        **extra,
    )


# ---------------------------------------------------------------- scopes never cross


@dataclass
class Principal:
    """A client: DRF token users, a logged-in session user, anonymous visitors."""

    name: str
    client: Client
    user: User | None = None
    token: str | None = None

    def send(self, url: str, key: str, body: Any) -> Any:
        extra = {"HTTP_AUTHORIZATION": f"Token {self.token}"} if self.token else {}
        return post(self.client, url, key, body, **extra)

    def scope(self, url: str) -> str:
        """The scope docs/design.md promises this principal on this endpoint.

        Tokens are DRF credentials: a plain Django view does not see them. The
        session-scoped view keeps anonymous visitors apart by their own session.
        """
        if self.user is not None and (self.token is None or url == "/fuzz/api/"):
            return f"user:{self.user.pk}"
        if url == "/fuzz/session/":
            return session_scope(self.client.session.session_key)
        return "anonymous"


@pytest.fixture
def people(django_user_model: Any) -> dict[str, User]:
    return {
        name: django_user_model.objects.create_user(name, password="pw")
        for name in ["alice", "bob", "carol"]
    }


@pytest.fixture
def cast(people: dict[str, User]) -> list[Principal]:
    """Built once per test: clients keep their sessions across examples."""
    from rest_framework.authtoken.models import Token

    alice = Token.objects.get_or_create(user=people["alice"])[0].key
    bob = Token.objects.get_or_create(user=people["bob"])[0].key
    carol = Client()
    carol.force_login(people["carol"])
    return [
        Principal("alice (token)", Client(), people["alice"], alice),
        Principal("bob (token)", Client(), people["bob"], bob),
        Principal("carol (session)", carol, people["carol"]),
        Principal("anonymous 1", Client()),
        Principal("anonymous 2", Client()),
    ]


ENDPOINTS = ["/fuzz/api/", "/fuzz/two-phase/", "/fuzz/session/"]
steps = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.sampled_from(ENDPOINTS),
        st.sampled_from(["k1", "k2", "K1"]),
        st.sampled_from([{"reference": "a"}, {"reference": "b"}]),
    ),
    min_size=1,
    max_size=6,
)


@needs_drf
@fuzz
@given(steps=steps)
def test_no_principal_ever_gets_a_response_stored_for_another_scope(
    cast: list[Principal], steps: list[tuple[int, str, str, dict[str, str]]]
) -> None:
    """A model of docs/design.md: per (scope, key) the first request runs, the same request
    replays its answer, another request is 422; every answer names the asker's scope."""
    reset()
    seen: dict[tuple[str, str], tuple[str, dict[str, str], bytes]] = {}
    for who, url, key, body in steps:
        principal = cast[who]
        response = principal.send(url, key, body)
        scope = principal.scope(url)  # after the request: it may have started a session
        earlier = seen.get((scope, key))
        if earlier is None:
            assert response.status_code == 201, (principal.name, url, response.content)
            assert json.loads(response.content)["who"] == scope, principal.name
            assert "Idempotent-Replayed" not in response
            seen[(scope, key)] = (url, body, response.content)
        elif earlier[:2] == (url, body):
            assert response.status_code == 201, (principal.name, url, response.content)
            assert response["Idempotent-Replayed"] == "true"
            assert response.content == earlier[2]
            assert json.loads(response.content)["who"] == scope
        else:
            assert response.status_code == 422, (principal.name, url, response.content)
    assert Order.objects.count() == len(seen)
    assert set(IdempotencyRecord.objects.values_list("scope", "key")) == set(seen)


@needs_drf
def test_a_rejected_credential_leaves_no_record_and_the_fixed_retry_runs(
    people: dict[str, User],
) -> None:
    from rest_framework.authtoken.models import Token

    client = Client()
    rejected = post(client, "/fuzz/api/", "k", HTTP_AUTHORIZATION="Token not-a-token")
    assert rejected.status_code == 401
    assert IdempotencyRecord.objects.count() == 0
    token = Token.objects.create(user=people["alice"]).key
    accepted = post(client, "/fuzz/api/", "k", HTTP_AUTHORIZATION=f"Token {token}")
    assert accepted.status_code == 201
    assert json.loads(accepted.content)["who"] == f"user:{people['alice'].pk}"


@needs_drf
def test_a_permission_denied_request_leaves_no_record() -> None:
    response = post(Client(), "/api/orders/", "k", {"reference": "x", "amount": 1})
    assert response.status_code in {401, 403}
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


# ---------------------------------------------------------------- the status endpoint


def status_by_id(client: Client, pk: Any, **extra: Any) -> Any:
    return client.get(f"/idempotency/operations/{pk}/", **extra)


def status_by_key(client: Client, key: str, **extra: Any) -> Any:
    return client.get("/idempotency/operations/", {"key": key}, **extra)


def same_answer(one: Any, two: Any) -> None:
    assert one.status_code == two.status_code
    assert one.content == two.content
    for header in ["Content-Type", "Cache-Control"]:
        assert one.get(header) == two.get(header)


@pytest.fixture
def alice_and_bob(people: dict[str, User]) -> tuple[Client, Client]:
    alice, bob = Client(), Client()
    alice.force_login(people["alice"])
    bob.force_login(people["bob"])
    return alice, bob


def test_the_owner_sees_its_operation(people: dict[str, User]) -> None:
    client = Client()
    client.force_login(people["alice"])
    post(client, "/fuzz/two-phase/", "mine")
    record = IdempotencyRecord.objects.get()
    for response in [status_by_id(client, record.pk), status_by_key(client, "mine")]:
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        found = json.loads(response.content)
        assert found["id"] == str(record.pk)
        assert found["key"] == "mine"
        assert found["status"] == Status.COMPLETED
        assert "scope" not in found
        assert "fingerprint" not in found
        assert "response_body" not in found


@fuzz
@given(
    key=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='",;'),
        min_size=1,
        max_size=255,
    )
)
def test_another_scopes_operation_is_indistinguishable_from_none(
    alice_and_bob: tuple[Client, Client], key: str
) -> None:
    """Bob asking for Alice's key or id gets exactly what he gets for a key or id that
    never existed: no enumeration of other scopes' keys."""
    reset()
    alice, bob = alice_and_bob
    assert post(alice, "/fuzz/two-phase/", key).status_code == 201
    record = IdempotencyRecord.objects.get()
    absent_key = key[:-1] + ("!" if key[-1] != "!" else "#")
    absent_id = uuid.uuid4()
    by_key = status_by_key(bob, key)
    assert by_key.status_code == 404
    assert by_key["Cache-Control"] == "no-store"
    same_answer(by_key, status_by_key(bob, absent_key))
    by_id = status_by_id(bob, record.pk)
    assert by_id.status_code == 404
    same_answer(by_id, status_by_id(bob, absent_id))
    same_answer(by_id, by_key)


def test_anonymous_callers_cannot_see_a_users_operation(
    alice_and_bob: tuple[Client, Client],
) -> None:
    alice, _ = alice_and_bob
    assert post(alice, "/fuzz/two-phase/", "alices").status_code == 201
    record = IdempotencyRecord.objects.get()
    anonymous = Client()
    same_answer(status_by_key(anonymous, "alices"), status_by_key(anonymous, "nobodys"))
    same_answer(status_by_id(anonymous, record.pk), status_by_id(anonymous, uuid.uuid4()))
    assert status_by_id(anonymous, record.pk).status_code == 404


@needs_drf
def test_token_users_are_scoped_on_the_status_endpoint(people: dict[str, User]) -> None:
    from rest_framework.authtoken.models import Token

    alice = Token.objects.create(user=people["alice"]).key
    bob = Token.objects.create(user=people["bob"]).key
    client = Client()
    assert post(client, "/fuzz/api/", "t", HTTP_AUTHORIZATION=f"Token {alice}").status_code == 201
    record = IdempotencyRecord.objects.get()
    mine = status_by_id(client, record.pk, HTTP_AUTHORIZATION=f"Token {alice}")
    assert mine.status_code == 200
    theirs = status_by_id(client, record.pk, HTTP_AUTHORIZATION=f"Token {bob}")
    never = status_by_id(client, uuid.uuid4(), HTTP_AUTHORIZATION=f"Token {bob}")
    assert theirs.status_code == 404
    same_answer(theirs, never)


def test_an_expired_operation_is_indistinguishable_from_none(people: dict[str, User]) -> None:
    client = Client()
    client.force_login(people["alice"])
    post(client, "/fuzz/two-phase/", "old")
    record = IdempotencyRecord.objects.get()
    # Past its tombstone too (TOMBSTONE_TTL): a tombstone still answers, as it should.
    gone = timezone.now() - conf.TOMBSTONE_TTL - timedelta(seconds=1)
    IdempotencyRecord.objects.update(expires_at=gone)
    same_answer(status_by_id(client, record.pk), status_by_id(client, uuid.uuid4()))
    same_answer(status_by_key(client, "old"), status_by_key(client, "never"))


# ---------------------------------------------------------------- headers


def test_cookies_and_private_headers_are_neither_stored_nor_replayed() -> None:
    client = Client()
    first = post(client, "/fuzz/private-headers/", "h")
    assert first.status_code == 201
    assert {"sessionid-copy", "tracking"} <= set(first.cookies)  # the live answer has them
    stored = IdempotencyRecord.objects.get().response_headers
    assert not {name.lower() for name in stored} & PRIVATE, stored
    assert stored["X-Public"] == "kept"
    replay = post(Client(), "/fuzz/private-headers/", "h")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert not set(replay.cookies) & {"sessionid-copy", "tracking"}
    for name, value in PRIVATE_HEADERS.items():
        assert replay.get(name) != value, name
    assert "secret-cookie" not in str(replay.serialize_headers())
    assert replay["X-Public"] == "kept"


header_names = st.sampled_from(sorted(PRIVATE)).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))
    )
)


@fuzz
@given(names=st.lists(header_names, min_size=1, max_size=6, unique_by=str.lower))
def test_no_spelling_of_a_private_header_is_stored(names: list[str]) -> None:
    reset()
    client = Client()
    headers = [[name, f"private-{index}"] for index, name in enumerate(names)]
    body = {"headers": [*headers, ["X-Mine", "public"]]}
    first = post(client, "/fuzz/echo-headers/", "e", body)
    assert first.status_code == 201
    stored = IdempotencyRecord.objects.get().response_headers
    assert {name.lower() for name in stored} == {"content-type", "location", "x-mine"}
    replay = post(Client(), "/fuzz/echo-headers/", "e", body)
    assert replay["Idempotent-Replayed"] == "true"
    assert "private-" not in replay.serialize_headers().decode("latin-1")


# ---------------------------------------------------------------- key lookups


PACKAGE = Path(django_idempotency.__file__).parent
SECRETS = {"key", "lease_token", "token"}


def test_the_package_never_compares_keys_or_lease_tokens_in_python() -> None:
    """A ``==`` on a key in Python would leak its prefix through timing (and would need
    hmac.compare_digest). Keys are only matched by the database, through the unique
    (scope, key) index, after the caller's scope is fixed; the test below checks that."""
    found = []
    for source in PACKAGE.rglob("*.py"):
        if "migrations" in source.parts:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                continue
            for operand in [node.left, *node.comparators]:
                name = getattr(operand, "attr", None) or getattr(operand, "id", None)
                if name in SECRETS:
                    found.append(f"{source.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def record_queries(queries: list[dict[str, str]]) -> list[str]:
    table = IdempotencyRecord._meta.db_table
    return [query["sql"] for query in queries if table in query["sql"]]


def test_keys_are_looked_up_only_by_scope_and_key_together(people: dict[str, User]) -> None:
    """Every statement that names a key also names the scope: the unique (scope, key)
    index answers it, and no query can match another scope's key."""
    client = Client()
    client.force_login(people["alice"])
    with CaptureQueriesContext(connection) as queries:
        post(client, "/fuzz/two-phase/", "lookup")  # claim
        post(client, "/fuzz/two-phase/", "lookup")  # replay
        post(client, "/fuzz/two-phase/", "lookup", {"other": 1})  # mismatch
        status_by_key(client, "lookup")
    quote = connection.ops.quote_name
    scope = f"{quote('scope')} = "
    key = f"{quote('key')} = "
    by_key = [sql for sql in record_queries(queries.captured_queries) if key in sql]
    assert by_key, "no key lookup captured"
    for sql in by_key:
        assert scope in sql, sql
        assert " LIKE " not in sql.upper(), sql


def test_the_unique_index_is_on_scope_and_key() -> None:
    constraints = connection.introspection.get_constraints(
        connection.cursor(), IdempotencyRecord._meta.db_table
    )
    unique = [c["columns"] for c in constraints.values() if c["unique"] and not c["primary_key"]]
    assert ["scope", "key"] in unique


# ---------------------------------------------------------------- the admin


ADMIN = "/admin/django_idempotency/idempotencyrecord/"


def test_the_admin_is_closed_to_anonymous_and_non_staff_users(people: dict[str, User]) -> None:
    record = IdempotencyRecord.objects.create(
        scope="user:1",
        key="secret",
        fingerprint="0" * 64,
        status=Status.COMPLETED,
        response_status=201,
        response_body=b"private answer",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    pages = [ADMIN, f"{ADMIN}{record.pk}/change/", f"{ADMIN}?q=secret"]
    anonymous = Client()
    member = Client()
    member.force_login(people["bob"])
    for client in [anonymous, member]:
        for page in pages:
            response = client.get(page)
            assert response.status_code == 302, page
            assert response["Location"].startswith("/admin/login/")
            assert b"private answer" not in response.content
        action = client.post(ADMIN, {"action": "delete_selected", "_selected_action": [record.pk]})
        assert action.status_code == 302
    assert IdempotencyRecord.objects.filter(pk=record.pk).exists()


def test_staff_without_permission_cannot_see_records(people: dict[str, User]) -> None:
    staff = people["carol"]
    staff.is_staff = True
    staff.save()
    client = Client()
    client.force_login(staff)
    assert client.get(ADMIN).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_idempotencyrecord"))
    client.force_login(User.objects.get(pk=staff.pk))
    assert client.get(ADMIN).status_code == 200
    assert client.get(f"{ADMIN}add/").status_code == 403


# ---------------------------------------------------------------- no bearer credential leaks


@needs_drf
def test_no_session_key_or_token_reaches_a_scope_the_admin_logs_or_signals(
    people: dict[str, User], admin_client: Client, caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    """A guest's session key and an API client's token are bearer credentials: whoever
    reads one acts as its owner. Neither may be stored in a scope, shown or searchable in
    the admin, logged, or sent with a signal, whatever the request went through."""
    from rest_framework.authtoken.models import Token

    # Everywhere, the status endpoint too: the guest looks its operation up by session.
    settings.IDEMPOTENCY = {"SCOPE": "django_idempotency.scopes.by_user_or_session"}
    caplog.set_level(logging.DEBUG, logger="django_idempotency")
    sent: list[str] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        record = kwargs.get("record")
        fields = (
            {}
            if record is None
            else {f.name: getattr(record, f.attname) for f in record._meta.concrete_fields}
        )
        sent.append(repr(kwargs) + repr(fields))

    every_signal = [
        signals.operation_started,
        signals.operation_completed,
        signals.operation_replayed,
        signals.operation_conflict,
    ]
    for signal in every_signal:
        signal.connect(receiver, dispatch_uid="test-credentials")
    try:
        guest = Client()
        token = Token.objects.create(user=people["alice"]).key
        api = Client()
        bearer = {"HTTP_AUTHORIZATION": f"Token {token}"}
        for _ in range(2):  # the run, then the replay
            assert post(guest, "/fuzz/session/", "guest-key").status_code == 201
            assert post(api, "/fuzz/api/", "api-key", **bearer).status_code == 201
            assert post(api, "/fuzz/two-phase/", "api-key", **bearer).status_code == 201
        assert post(guest, "/fuzz/session/", "guest-key", {"other": 1}).status_code == 422
        assert guest.get("/idempotency/operations/", {"key": "guest-key"}).status_code == 200
        assert api.get("/idempotency/operations/", {"key": "api-key"}, **bearer).status_code == 200
    finally:
        for signal in every_signal:
            signal.disconnect(dispatch_uid="test-credentials")
    session_key = guest.session.session_key
    api_session_key = api.session.session_key  # the plain view gave the API client one
    secrets = {
        "session key": session_key,
        "API client's session key": api_session_key,
        "token": token,
    }
    assert session_key and api_session_key and token

    records = list(IdempotencyRecord.objects.all())
    assert len(records) == 3
    stored = [
        repr({f.name: getattr(r, f.attname) for f in r._meta.concrete_fields}) for r in records
    ]
    pages = {"changelist": admin_client.get(ADMIN)}
    for record in records:
        pages[f"change page of {record.scope}"] = admin_client.get(f"{ADMIN}{record.pk}/change/")
    for name, secret in secrets.items():
        # The search page echoes what was typed (in its box and links): nothing may match.
        searched = admin_client.get(ADMIN, {"q": secret})
        assert searched.context["cl"].result_count == 0, f"the admin finds records by the {name}"
    assert len(sent) >= 9
    for name, secret in secrets.items():
        for where, text in [
            *((f"admin {page}", response.content.decode()) for page, response in pages.items()),
            *(("a stored record", text) for text in stored),
            *(("a signal", text) for text in sent),
            ("the log", caplog.text + repr([r.__dict__ for r in caplog.records])),
        ]:
            assert secret not in text, f"the {name} appears in {where}"
    # The guest is still told apart, by the hash the admin can search for.
    found = admin_client.get(ADMIN, {"q": session_scope(session_key)})
    assert found.context["cl"].result_count == 1
