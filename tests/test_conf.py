"""``django_idempotency.conf.conf``: defaults, and overrides read at access time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings

from django_idempotency import scopes
from django_idempotency.conf import DEFAULTS, conf
from django_idempotency.models import IdempotencyRecord
from tests.conftest import send
from tests.testapp.models import Order


def test_defaults(settings) -> None:
    if hasattr(settings, "IDEMPOTENCY"):
        del settings.IDEMPOTENCY
    assert conf.HEADER == "Idempotency-Key"
    assert conf.header_meta_key == "HTTP_IDEMPOTENCY_KEY"
    assert conf.REQUIRED is False
    assert timedelta(hours=24) == conf.TTL
    assert timedelta(seconds=90) == conf.LEASE
    assert timedelta(0) == conf.WAIT
    assert conf.SCOPE is scopes.by_user
    assert conf.MAX_RESPONSE_BYTES == 1_048_576
    assert frozenset({"POST", "PUT", "PATCH", "DELETE"}) == conf.METHODS
    assert conf.PROBLEM_BASE_URL.startswith("https://")


def test_an_empty_or_none_setting_means_the_defaults(settings) -> None:
    for value in ({}, None):
        settings.IDEMPOTENCY = value
        for name in DEFAULTS:
            assert conf.get(name) == DEFAULTS[name]


def test_a_partial_dict_keeps_the_other_defaults() -> None:
    with override_settings(IDEMPOTENCY={"REQUIRED": True}):
        assert conf.REQUIRED is True
        assert DEFAULTS["TTL"] == conf.TTL
        assert DEFAULTS["HEADER"] == conf.HEADER


def test_override_settings_takes_effect_at_once() -> None:
    assert timedelta(seconds=90) == conf.LEASE
    with override_settings(IDEMPOTENCY={"LEASE": timedelta(seconds=5), "METHODS": ["post"]}):
        assert timedelta(seconds=5) == conf.LEASE
        assert frozenset({"POST"}) == conf.METHODS
    assert timedelta(seconds=90) == conf.LEASE


def test_scope_accepts_a_callable_or_a_dotted_path() -> None:
    with override_settings(IDEMPOTENCY={"SCOPE": "django_idempotency.scopes.global_scope"}):
        assert conf.SCOPE is scopes.global_scope
    with override_settings(IDEMPOTENCY={"SCOPE": scopes.by_user_or_session}):
        assert conf.SCOPE is scopes.by_user_or_session


def test_header_name_maps_to_meta() -> None:
    with override_settings(IDEMPOTENCY={"HEADER": "X-Request-Id"}):
        assert conf.header_meta_key == "HTTP_X_REQUEST_ID"


# The guard reads the settings per request.


@pytest.mark.django_db
def test_header_setting_applies_to_the_next_request(client) -> None:
    with override_settings(IDEMPOTENCY={"HEADER": "X-Request-Id"}):
        send(client, "/orders/", {}, HTTP_X_REQUEST_ID="r1")
        again = send(client, "/orders/", {}, HTTP_X_REQUEST_ID="r1")
        assert again["Idempotent-Replayed"] == "true"
        send(client, "/orders/", {}, key="ignored-now")
    assert Order.objects.count() == 2
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["r1"]


@pytest.mark.django_db
def test_methods_setting_applies_to_the_next_request(client) -> None:
    with override_settings(IDEMPOTENCY={"METHODS": ["POST"]}):
        for _ in range(2):
            send(client, "/plain/", {}, key="k1", method="put")
        assert IdempotencyRecord.objects.count() == 0
    send(client, "/plain/", {}, key="k1", method="put")
    assert IdempotencyRecord.objects.count() == 1


@pytest.mark.django_db
def test_ttl_and_lease_settings_apply_to_the_next_claim(client) -> None:
    with override_settings(IDEMPOTENCY={"TTL": timedelta(minutes=5)}):
        send(client, "/orders/", {}, key="k1")
    record = IdempotencyRecord.objects.get()
    assert record.expires_at - record.completed_at == timedelta(minutes=5)


@pytest.mark.django_db
def test_required_setting_is_overridden_by_the_decorator(client) -> None:
    with override_settings(IDEMPOTENCY={"REQUIRED": False}):
        assert send(client, "/orders/required/", {}).status_code == 400
