"""The operation-status endpoint, the 409 body's link to it, and accepted()."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import include, path, reverse
from django.utils import timezone

from django_idempotency import views
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord, Status
from django_idempotency.responses import accepted
from tests.conftest import needs_drf
from tests.factories import IdempotencyRecordFactory, request_fingerprint


@idempotent
def start_export(request: HttpRequest) -> HttpResponse:
    """Work that goes on after the response: answer 202 pointing at the status URL."""
    return accepted(request.idempotency, retry_after=5)  # type: ignore[attr-defined]


urlpatterns = [
    path("idempotency/", include("django_idempotency.urls")),
    path("exports/", start_export),
    path("", include("tests.urls")),
]


class WithoutStatusUrls:
    """A URLconf that forgot ``include("django_idempotency.urls")``."""

    urlpatterns = [path("exports/", start_export), path("orders/", start_export)]


class ReadsFromReplica:
    """Routes record reads to a replica alias that does not exist: reading it fails."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "replica" if model._meta.app_label == "django_idempotency" else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return None


pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.test_status")]

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {
    "id",
    "key",
    "status",
    "attempts",
    "created_at",
    "completed_at",
    "expires_at",
    "locked_until",
    "response_status",
    "tombstone",
}


def by_id(record: IdempotencyRecord | uuid.UUID) -> str:
    pk = record.pk if isinstance(record, IdempotencyRecord) else record
    return reverse("django_idempotency:operation", kwargs={"pk": pk})


def by_key(*keys: str) -> str:
    from urllib.parse import urlencode

    base = reverse("django_idempotency:operation-by-key")
    return base + ("?" + urlencode([("key", key) for key in keys]) if keys else "")


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="secret")


@pytest.fixture
def as_alice(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def mine(user: User, **kwargs: Any) -> IdempotencyRecord:
    return IdempotencyRecordFactory(scope=f"user:{user.pk}", **kwargs)


class TestAnswer:
    def test_by_id(self, as_alice, alice):
        record = mine(alice, completed=True, key="k-1")
        response = as_alice.get(by_id(record))
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        body = response.json()
        assert set(body) == FIELDS
        assert body["id"] == str(record.pk)
        assert body["key"] == "k-1"
        assert body["status"] == Status.COMPLETED
        assert body["attempts"] == 1
        assert body["response_status"] == 201
        assert body["locked_until"] is None
        for name in ("created_at", "completed_at", "expires_at"):
            assert body[name].endswith("Z")

    def test_by_key(self, as_alice, alice):
        # URL-encoded in the query: '/', '"', '&', '=', '%', '+' and '#' survive.
        record = mine(alice, key='order-42/"quoted"&x=%2B+#')
        body = as_alice.get(by_key('order-42/"quoted"&x=%2B+#')).json()
        assert body["id"] == str(record.pk)
        assert body["status"] == Status.IN_PROGRESS
        assert body["locked_until"] is not None
        assert body["completed_at"] is None
        assert body["response_status"] is None

    def test_keys_are_case_sensitive(self, as_alice, alice):
        mine(alice, key="Key-A")
        assert as_alice.get(by_key("key-a")).status_code == 404

    def test_head(self, as_alice, alice):
        record = mine(alice)
        response = as_alice.head(by_id(record))
        assert response.status_code == 200
        assert response.content == b""
        assert response["Cache-Control"] == "no-store"

    def test_anonymous_caller_sees_the_anonymous_scope(self, client):
        record = IdempotencyRecordFactory(scope="anonymous")
        assert client.get(by_id(record)).status_code == 200

    @override_settings(IDEMPOTENCY={"SCOPE": "django_idempotency.scopes.global_scope"})
    def test_uses_the_configured_scope_function(self, client):
        record = IdempotencyRecordFactory(scope="global")
        assert client.get(by_id(record)).json()["id"] == str(record.pk)

    @override_settings(DATABASE_ROUTERS=["tests.test_status.ReadsFromReplica"])
    def test_reads_the_records_write_database_not_a_replica(self, as_alice, alice):
        record = mine(alice)
        assert as_alice.get(by_id(record)).status_code == 200
        assert as_alice.get(by_key(record.key)).status_code == 200

    def test_opts_out_of_atomic_requests(self):
        for view in (views.operation, views.operation_by_key):
            assert "default" in view._non_atomic_requests  # type: ignore[attr-defined]


class TestNoEnumeration:
    def test_missing_foreign_and_expired_look_the_same(self, as_alice, alice):
        bob = User.objects.create_user("bob")
        theirs = mine(bob, completed=True, key="shared-key")
        old = mine(alice, expired=True, key="old-key")
        answers = [
            as_alice.get(by_id(uuid.uuid4())),
            as_alice.get(by_id(theirs)),
            as_alice.get(by_id(old)),
            as_alice.get(by_key("no-such-key")),
            as_alice.get(by_key("shared-key")),
            as_alice.get(by_key("old-key")),
        ]
        assert {response.status_code for response in answers} == {404}
        assert len({response.content for response in answers}) == 1
        assert len({tuple(sorted(response.items())) for response in answers}) == 1
        body = answers[0].json()
        assert answers[0]["Content-Type"] == "application/problem+json"
        assert body["status"] == 404
        assert body["type"].endswith("operation-not-found")
        assert "shared-key" not in answers[4].text

    def test_other_users_record_with_the_same_key(self, as_alice, alice):
        bob = User.objects.create_user("bob")
        mine(bob, key="same")
        own = mine(alice, key="same")
        assert as_alice.get(by_key("same")).json()["id"] == str(own.pk)

    def test_anonymous_caller_does_not_see_users_records(self, client, alice):
        record = mine(alice)
        assert client.get(by_id(record)).status_code == 404


class TestBadRequests:
    def test_missing_key(self, as_alice):
        response = as_alice.get(by_key())
        assert response.status_code == 400
        assert response["Content-Type"] == "application/problem+json"
        assert response["Cache-Control"] == "no-store"
        assert response.json()["type"].endswith("idempotency-key-missing")

    @pytest.mark.parametrize(
        ("keys", "reason"),
        [
            ([""], "The key is empty."),
            (["x" * 256], "The key is longer than 255 characters."),
            (["tab\there"], "The key may contain printable ASCII characters only."),
            (["caf\u00e9"], "The key may contain printable ASCII characters only."),
            (["a", "b"], "Send exactly one key."),
        ],
    )
    def test_malformed_key(self, as_alice, keys, reason):
        response = as_alice.get(by_key(*keys))
        assert response.status_code == 400
        body = response.json()
        assert body["type"].endswith("idempotency-key-invalid")
        assert body["detail"].startswith(reason)

    def test_longest_key_is_fine(self, as_alice, alice):
        record = mine(alice, key="k" * 255)
        assert as_alice.get(by_key("k" * 255)).json()["id"] == str(record.pk)

    def test_malformed_uuid_is_not_routed(self, as_alice):
        assert as_alice.get("/idempotency/operations/not-a-uuid/").status_code == 404

    @pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "trace", "PURGE"])
    @pytest.mark.parametrize("csrf", [False, True], ids=["csrf-not-enforced", "csrf-enforced"])
    def test_only_get_and_head(self, alice, method, csrf, settings):
        """Also under CsrfViewMiddleware with the checks enforced: the endpoint changes
        nothing, so an unsafe method gets the documented 405, not an HTML 403."""
        settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]
        client = Client(enforce_csrf_checks=csrf)
        client.force_login(alice)
        record = mine(alice)
        for url in (by_id(record), by_key(record.key)):
            response = client.generic(method.upper(), url)
            assert response.status_code == 405, response.content
            assert response["Allow"] == "GET, HEAD, OPTIONS"
            assert response["Cache-Control"] == "no-store"
            assert response["Content-Type"] == "application/problem+json"
            body = response.json()
            assert body["type"].endswith("method-not-allowed")
            assert method.upper() in body["detail"]
        assert IdempotencyRecord.objects.filter(pk=record.pk).exists()

    @pytest.mark.parametrize("csrf", [False, True], ids=["csrf-not-enforced", "csrf-enforced"])
    def test_options_names_the_methods(self, alice, csrf, settings):
        settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]
        client = Client(enforce_csrf_checks=csrf)
        record = mine(alice)
        for url in (by_id(record), by_key(record.key), by_key()):
            response = client.options(url)
            assert response.status_code == 204
            assert response["Allow"] == "GET, HEAD, OPTIONS"
            assert response["Cache-Control"] == "no-store"
            assert response.content == b""

    @pytest.mark.parametrize(
        ("key", "reason"),
        [
            ("a b", "The key may contain printable ASCII characters only."),
            (" ", "The key is empty."),
            ("a,b", "Send exactly one key, not a list."),
            ("a;p=1", "The key must not carry parameters."),
            ('"a b"', "The key may contain printable ASCII characters only, no spaces."),
            ('"open', "The key's closing quote is missing."),
        ],
    )
    def test_a_key_a_guarded_view_refuses_is_refused(self, as_alice, alice, key, reason):
        """``?key=`` is read by keys.parse_key, like the header: never looked up."""
        mine(alice, key=key)  # even if a record somehow held it
        response = as_alice.get(by_key(key))
        assert response.status_code == 400
        body = response.json()
        assert body["type"].endswith("idempotency-key-invalid")
        assert body["detail"].startswith(reason)

    def test_the_quoted_header_form_finds_the_same_operation(self, as_alice, alice):
        record = mine(alice, key="a,b")  # sent as Idempotency-Key: "a,b"
        assert as_alice.get(by_key('"a,b"')).json()["id"] == str(record.pk)
        plain = mine(alice, key="plain")
        assert as_alice.get(by_key('"plain"')).json()["id"] == str(plain.pk)
        assert as_alice.get(by_key("plain")).json()["id"] == str(plain.pk)

    def test_every_answer_is_no_store(self, as_alice, alice):
        record = mine(alice)
        for url in (by_id(record), by_key(record.key), by_id(uuid.uuid4()), by_key()):
            assert as_alice.get(url)["Cache-Control"] == "no-store"


class TestApiCallers:
    @needs_drf
    def test_token_authenticated(self, client, alice):
        from rest_framework.authtoken.models import Token

        token = Token.objects.create(user=alice)
        record = mine(alice)
        response = client.get(by_id(record), HTTP_AUTHORIZATION=f"Token {token.key}")
        assert response.status_code == 200
        assert response.json()["id"] == str(record.pk)
        response = client.get(by_key(record.key), HTTP_AUTHORIZATION=f"Token {token.key}")
        assert response.json()["id"] == str(record.pk)

    @needs_drf
    def test_basic_authenticated(self, client, alice):
        record = mine(alice)
        credentials = base64.b64encode(b"alice:secret").decode()
        response = client.get(by_id(record), HTTP_AUTHORIZATION=f"Basic {credentials}")
        assert response.status_code == 200

    @needs_drf
    def test_bad_credentials_get_401_not_the_anonymous_scope(self, client):
        record = IdempotencyRecordFactory(scope="anonymous")
        response = client.get(by_id(record), HTTP_AUTHORIZATION="Token not-a-token")
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
        assert response["Content-Type"] == "application/problem+json"
        assert response["Cache-Control"] == "no-store"
        assert str(record.pk) not in response.text

    @needs_drf
    def test_token_of_another_user_sees_404(self, client, alice):
        from rest_framework.authtoken.models import Token

        bob = User.objects.create_user("bob")
        token = Token.objects.create(user=bob)
        record = mine(alice)
        response = client.get(by_id(record), HTTP_AUTHORIZATION=f"Token {token.key}")
        assert response.status_code == 404

    def test_importable_and_working_without_drf(self):
        script = """
import sys
sys.modules["rest_framework"] = None  # an ImportError for DRF and all its modules
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django_idempotency"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    ROOT_URLCONF="django_idempotency.urls",
    USE_TZ=True,
    ALLOWED_HOSTS=["*"],
)
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.test import Client
import django_idempotency.views, django_idempotency.urls
response = Client().get("/operations/?key=nothing")
assert response.status_code == 404, response.status_code
print("ok")
"""
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"


@pytest.mark.django_db(transaction=True)
class TestConflictLink:
    def test_409_operation_member_resolves_to_the_status(self, as_alice, alice):
        data = {"reference": "r-1", "amount": 5}
        record = mine(
            alice,
            key="busy-key",
            fingerprint=request_fingerprint(path="/orders/", data=data),
        )
        response = as_alice.post(
            "/orders/",
            json.dumps(data),
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY="busy-key",
        )
        assert response.status_code == 409
        link = response.json()["operation"]
        assert link == f"/idempotency/operations/{record.pk}/"
        status = as_alice.get(link)
        assert status.status_code == 200
        assert status.json()["status"] == Status.IN_PROGRESS
        assert status.json()["id"] == str(record.pk)

    @override_settings(ROOT_URLCONF=WithoutStatusUrls)
    def test_409_without_the_app_urls_has_no_link(self, as_alice, alice):
        mine(alice, key="busy-key", fingerprint=request_fingerprint(path="/orders/", data={}))
        response = as_alice.post(
            "/orders/",
            json.dumps({}),
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY="busy-key",
        )
        assert response.status_code == 409
        assert response.json()["operation"] is None


@pytest.mark.django_db(transaction=True)
class TestAccepted:
    def test_202_points_at_the_status_and_is_replayed(self, as_alice):
        first = as_alice.post("/exports/", HTTP_IDEMPOTENCY_KEY="export-1")
        assert first.status_code == 202
        record = IdempotencyRecord.objects.get(key="export-1")
        location = by_id(record)
        assert first["Location"] == location
        assert first["Retry-After"] == "5"
        assert first.json() == {"id": str(record.pk), "operation": location}
        status = as_alice.get(location).json()
        assert status["status"] == Status.COMPLETED
        assert status["response_status"] == 202
        retry = as_alice.post("/exports/", HTTP_IDEMPOTENCY_KEY="export-1")
        assert retry.status_code == 202
        assert retry["Location"] == location
        assert retry["Idempotent-Replayed"] == "true"
        assert retry.content == first.content

    def test_custom_body(self):
        record = IdempotencyRecordFactory()
        response = accepted(record, {"export": "/exports/7/"})
        assert json.loads(response.content) == {"export": "/exports/7/"}
        assert response["Location"] == by_id(record)
        assert "Retry-After" not in response

    @override_settings(ROOT_URLCONF=WithoutStatusUrls)
    def test_needs_the_app_urls(self):
        with pytest.raises(ImproperlyConfigured, match=r"django_idempotency\.urls"):
            accepted(IdempotencyRecordFactory())


def test_expired_in_progress_record_is_gone(as_alice, alice):
    past = timezone.now() - timedelta(seconds=1)
    record = mine(alice, expires_at=past, locked_until=past)
    assert as_alice.get(by_id(record)).status_code == 404


def test_expired_record_with_a_live_lease_is_still_in_progress(as_alice, alice):
    """The engine's one rule: a live lease is never expired, so the client must not retry."""
    record = mine(alice, expires_at=timezone.now() - timedelta(seconds=1))
    body = as_alice.get(by_id(record)).json()
    assert body["status"] == Status.IN_PROGRESS
