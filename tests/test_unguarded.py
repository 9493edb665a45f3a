"""Which requests the guard lets through unguarded: a method it does not guard, or no
key where none is required; where one is, a missing key is a 400."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_idempotency.models import IdempotencyRecord
from tests.conftest import assert_problem
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def test_missing_key_where_required_by_the_decorator_is_400(post) -> None:
    response = post("/orders/required/", {})
    assert_problem(response, 400, "idempotency-key-missing")
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


@override_settings(IDEMPOTENCY={"REQUIRED": True})
def test_missing_key_where_required_by_settings_is_400(post) -> None:
    assert_problem(post("/orders/", {}), 400, "idempotency-key-missing")
    assert Order.objects.count() == 0


def test_optional_missing_key_runs_unguarded(post) -> None:
    assert post("/orders/", {}).status_code == 201
    assert post("/orders/", {}).status_code == 201
    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "head", "options"])
def test_safe_methods_pass_through_unguarded(client, method: str) -> None:
    for _ in range(2):
        response = getattr(client, method)("/plain/", HTTP_IDEMPOTENCY_KEY="k1")
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "head", "options"])
@override_settings(IDEMPOTENCY={"REQUIRED": True})
def test_safe_methods_need_no_key_even_when_required(client, method: str) -> None:
    assert getattr(client, method)("/plain/").status_code == 200


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_unsafe_methods_are_guarded(post, method: str) -> None:
    first = post("/plain/", {}, key=f"k-{method}", method=method)
    again = post("/plain/", {}, key=f"k-{method}", method=method)
    assert first.content == again.content == f"{method.upper()} ok".encode()
    assert again["Idempotent-Replayed"] == "true"


def test_methods_argument(post) -> None:
    for _ in range(2):
        post("/orders/put-only/", {}, key="k1")
    assert IdempotencyRecord.objects.count() == 0
    post("/orders/put-only/", {}, key="k1", method="put")
    assert post("/orders/put-only/", {}, key="k1", method="put")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 3
