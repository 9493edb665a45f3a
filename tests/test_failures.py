"""What an attempt that fails leaves: a 5xx or an exception rolls back and frees the key
for the retry; 2xx, 3xx and the view's own 4xx are answers, stored and replayed."""

from __future__ import annotations

import pytest
from django.test import Client

from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import send
from tests.testapp import views
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", ["raise", "500", "502", "503"])
def test_failed_attempt_rolls_back_and_releases_the_key(failure: str) -> None:
    client = Client(raise_request_exception=False)
    views.CONTROL["fail"] = failure
    response = send(client, "/orders/flaky/", {"amount": 3}, key="k1")
    assert response.status_code == (500 if failure == "raise" else int(failure))
    assert "Idempotent-Replayed" not in response
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0

    views.CONTROL["fail"] = None
    retry = send(client, "/orders/flaky/", {"amount": 3}, key="k1")
    assert retry.status_code == 201
    assert "Idempotent-Replayed" not in retry
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED
    assert send(client, "/orders/flaky/", {"amount": 3}, key="k1")["Idempotent-Replayed"] == "true"


def test_exception_propagates_to_django(post) -> None:
    views.CONTROL["fail"] = "raise"
    with pytest.raises(RuntimeError, match="the view failed"):
        post("/orders/flaky/", {}, key="k1")
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "status"),
    [("/orders/", 201), ("/orders/redirect/", 303), ("/orders/reject/", 409)],
)
def test_2xx_3xx_and_the_views_own_4xx_are_stored_and_replayed(post, path, status) -> None:
    first = post(path, {}, key="k1")
    again = post(path, {}, key="k1")
    assert first.status_code == again.status_code == status
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get().response_status == status
    assert Order.objects.count() == 1


@pytest.mark.parametrize("status", ["400", "404", "410", "422"])
def test_every_4xx_the_view_returns_is_stored(post, status) -> None:
    views.CONTROL["fail"] = status
    post("/orders/flaky/", {}, key="k1")
    views.CONTROL["fail"] = None
    again = post("/orders/flaky/", {}, key="k1")
    assert again.status_code == int(status)
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
