"""What a replay says about caching, and what the guard's problem answers promise.

A replay is the answer to one client's retry: it must never be more cacheable than the
answer it repeats, or a shared cache could hand a private answer to someone else.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import Client
from django.urls import include, path
from django.utils.cache import patch_vary_headers

from django_idempotency import responses
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

#: What the view answers with: the header values of the first response.
SENT: dict[str, str] = {}


@idempotent
def cached(request: HttpRequest) -> HttpResponse:
    order = Order.objects.create(reference="cached")
    response = HttpResponse(
        json.dumps({"id": order.pk}), status=201, content_type="application/json"
    )
    for name, value in SENT.items():
        response[name] = value
    return response


@idempotent
def streamed(request: HttpRequest) -> StreamingHttpResponse:
    order = Order.objects.create(reference="streamed")
    chunks = [b'{"id": ', str(order.pk).encode(), b', "parts": ', b"[1, 2, 3]}"]
    return StreamingHttpResponse(iter(chunks), status=201, content_type="application/json")


@idempotent(atomic=False)
def taken_over(request: HttpRequest) -> HttpResponse:
    """Commits an order, then a retry takes the operation over before it finishes."""
    operation = request.idempotency  # type: ignore[attr-defined]
    Order.objects.create(reference="kept")
    IdempotencyRecord.objects.filter(pk=operation.id).update(lease_token=uuid.uuid4())
    return HttpResponse(status=201)


urlpatterns = [
    path("cached/", cached),
    path("streamed/", streamed),
    path("taken-over/", taken_over),
    path("idempotency/", include("django_idempotency.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.test_responses")]


@pytest.fixture(autouse=True)
def fresh_headers() -> Any:
    SENT.clear()
    yield
    SENT.clear()


def send(url: str, key: str, **extra: Any) -> Any:
    return Client().post(
        url, data="{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY=key, **extra
    )


def directives(value: str | None) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for part in (value or "").split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            found[name.lower()] = argument or None
    return found


def who_may_store(cache_control: str | None) -> set[str]:
    """The caches allowed to keep a response (RFC 9111 5.2.2): none, the client's, or
    shared ones too. ``no-cache`` still lets them store (and revalidate)."""
    found = directives(cache_control)
    if "no-store" in found:
        return set()
    if "private" in found:
        return {"private"}
    return {"private", "shared"}


def lifetime(cache_control: str | None) -> int:
    """The longest freshness any cache may give it, 0 when it must revalidate."""
    found = directives(cache_control)
    if "no-cache" in found or "no-store" in found:
        return 0
    ages = [int(found[name] or 0) for name in ("max-age", "s-maxage") if name in found]
    return max(ages, default=0)


ORIGINALS = [
    None,
    "no-store, private",
    "no-store",
    "private",
    "private, max-age=60",
    "no-cache",
    "max-age=0, must-revalidate",
    "public, max-age=600",
    "public, s-maxage=30, max-age=5",
    "s-maxage=86400",
]


@pytest.mark.parametrize("original", ORIGINALS, ids=lambda value: value or "none")
def test_a_replay_is_never_more_cacheable_than_the_original(original):
    if original is not None:
        SENT["Cache-Control"] = original
    first = send("/cached/", "k")
    assert first.status_code == 201
    assert first.get("Cache-Control") == original
    replay = send("/cached/", "k")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert who_may_store(replay.get("Cache-Control")) <= who_may_store(original)
    assert lifetime(replay.get("Cache-Control")) <= lifetime(original)
    # The stored rules are repeated as they were; without any, nobody may keep it.
    assert replay["Cache-Control"] == (original or responses._REPLAY_CACHE_CONTROL)
    assert Order.objects.count() == 1


def test_expires_pragma_and_vary_go_with_cache_control():
    """Vary is replayed too: the original's caching rules hold for its variant only, so
    a replay that kept them but dropped Vary could be cached as every variant's answer."""
    SENT.update(
        {
            "Cache-Control": "public, max-age=60",
            "Expires": "Wed, 21 Oct 2099 07:28:00 GMT",
            "Pragma": "no-cache",
            "Vary": "Accept-Language",
        }
    )
    first = send("/cached/", "k", HTTP_ACCEPT_LANGUAGE="fr")
    stored = {
        name.lower(): value
        for name, value in IdempotencyRecord.objects.get().response_headers.items()
    }
    assert stored["cache-control"] == "public, max-age=60"
    assert stored["expires"] == "Wed, 21 Oct 2099 07:28:00 GMT"
    assert stored["pragma"] == "no-cache"
    assert stored["vary"] == "Accept-Language"
    replay = send("/cached/", "k", HTTP_ACCEPT_LANGUAGE="fr")
    for name in ("Cache-Control", "Expires", "Pragma"):
        assert replay[name] == first[name], name
    assert "Accept-Language" in replay["Vary"]


def test_middleware_still_adds_its_vary_to_the_stored_one():
    SENT["Vary"] = "Accept-Language"
    send("/cached/", "k")
    replay = send("/cached/", "k")
    response = HttpResponse()
    response["Vary"] = replay["Vary"]
    patch_vary_headers(response, ["Cookie"])
    assert {part.strip() for part in response["Vary"].split(",")} == {"Accept-Language", "Cookie"}


def test_a_record_stored_without_cache_control_still_replays_and_is_not_kept():
    """Records of older versions never stored Cache-Control: whatever the original said,
    the replay must not be cached."""
    record = IdempotencyRecordFactory(
        completed=True,
        key="old",
        route="/cached/",
        fingerprint=request_fingerprint(path="/cached/", data="{}"),
    )
    assert "Cache-Control" not in record.response_headers
    replay = send("/cached/", "old")
    assert replay.status_code == 201
    assert replay.content == bytes(record.response_body)
    assert replay["Location"] == "/orders/1/"
    assert replay["Cache-Control"] == "no-store"
    assert replay["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 0


def test_a_short_stream_is_stored_and_replayed_byte_for_byte():
    first = send("/streamed/", "s")
    body = b"".join(first.streaming_content)
    replay = send("/streamed/", "s")
    assert replay.status_code == 201
    assert replay.content == body
    assert replay["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_a_stream_over_the_limit_says_why_it_was_not_stored(settings):
    settings.IDEMPOTENCY = {"MAX_RESPONSE_BYTES": 8}
    first = send("/streamed/", "s")
    b"".join(first.streaming_content)
    replay = send("/streamed/", "s")
    assert replay.status_code == 303
    detail = replay.json()["detail"]
    assert "larger than MAX_RESPONSE_BYTES, or an asynchronous stream" in detail
    assert "or streamed" not in detail
    assert Order.objects.count() == 1


@pytest.mark.parametrize("reason", ["lease_lost", "lock"])
def test_busy_promises_nothing_about_commits(reason):
    """An atomic=False view's own commits stay, so the answer must not say otherwise."""
    response = responses.busy(reason, 1)
    body = json.loads(response.content)
    assert response.status_code == 409
    assert response["Retry-After"] == "1"
    slug = "idempotency-lease-lost" if reason == "lease_lost" else "idempotency-lock-conflict"
    assert body["type"].endswith(slug)
    assert "committed" not in body["detail"].lower()
    assert "response was not stored" in body["detail"]
    assert body["detail"].endswith(
        "Retry with the same Idempotency-Key to get the operation's outcome."
    )


def test_a_lost_lease_after_an_autocommitted_write_says_what_is_true():
    response = send("/taken-over/", "t")
    assert response.status_code == 409
    body = response.json()
    assert body["type"].endswith("idempotency-lease-lost")
    assert Order.objects.filter(reference="kept").count() == 1  # committed, and it stays
    assert "Nothing was committed" not in body["detail"]
    assert "this attempt's response was not stored" in body["detail"]
