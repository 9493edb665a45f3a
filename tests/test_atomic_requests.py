"""``ATOMIC_REQUESTS``: guarded views opt out, so the claim still commits on its own;
requests the guard lets through keep the transaction the project asked for."""

from __future__ import annotations

import pytest
from django.test import Client

from django_idempotency.models import IdempotencyRecord, Status
from tests.conftest import needs_drf, send
from tests.testapp import views
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_decorator_under_atomic_requests(atomic_requests, post) -> None:
    first = post("/orders/probe/", {}, key="k1")
    assert first.status_code == 201
    assert views.CONTROL["atomic_blocks"] == 1  # only the guard's own transaction
    again = post("/orders/probe/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_the_claim_commits_before_the_view_under_atomic_requests(atomic_requests, post) -> None:
    """Another connection sees the IN_PROGRESS record while the view runs: the claim
    did not wait for the request's transaction."""
    views.CONTROL["peek"] = True
    assert post("/orders/probe/", {}, key="k1").status_code == 201
    assert views.CONTROL["peeked"] == [Status.IN_PROGRESS]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/orders/single/", "/orders/nonatomic/"])
def test_other_modes_under_atomic_requests(atomic_requests, post, path) -> None:
    assert post(path, {}, key="k1").status_code == 201
    assert post(path, {}, key="k1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_failure_under_atomic_requests_releases(atomic_requests) -> None:
    client = Client(raise_request_exception=False)
    views.CONTROL["fail"] = "raise"
    assert send(client, "/orders/flaky/", {}, key="k1").status_code == 500
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0
    views.CONTROL["fail"] = None
    assert send(client, "/orders/flaky/", {}, key="k1").status_code == 201


@needs_drf
@pytest.mark.django_db(transaction=True)
def test_mixin_under_atomic_requests(atomic_requests) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    first = client.post("/api/plain/", {"reference": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == 201
    again = client.post("/api/plain/", {"reference": "r"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    invalid = client.post(
        "/api/validating/",
        {"reference": "r", "amount": -1},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    assert invalid.status_code == 400
    assert Order.objects.count() == 1  # "before-validation" rolled back
    assert not IdempotencyRecord.objects.filter(key="k2").exists()


@pytest.mark.django_db(transaction=True)
def test_requests_without_a_key_keep_atomic_requests(atomic_requests) -> None:
    """The opt-out is for the claim's sake: a request the guard lets through (no key,
    optional) must still run atomically as the project asked, or a failure half-way
    leaves half its writes."""
    client = Client(raise_request_exception=False)
    views.CONTROL["fail"] = "raise"
    assert send(client, "/orders/flaky/", {}).status_code == 500
    assert Order.objects.count() == 0
    views.CONTROL["fail"] = None
    assert send(client, "/orders/probe/", {}).status_code == 201
    assert views.CONTROL["atomic_blocks"] == 1


@pytest.mark.django_db(transaction=True)
def test_the_projects_own_non_atomic_requests_is_kept(atomic_requests, post) -> None:
    assert post("/orders/probe/opted-out/", {}).status_code == 201
    assert views.CONTROL["atomic_blocks"] == 0
    assert post("/orders/probe/opted-out/", {}, key="k1").status_code == 201
    assert views.CONTROL["atomic_blocks"] == 1  # the guard's own transaction


@needs_drf
@pytest.mark.django_db(transaction=True)
def test_unguarded_drf_actions_keep_atomic_requests(atomic_requests) -> None:
    from rest_framework.test import APIClient

    client = APIClient(raise_request_exception=False)
    views.CONTROL["fail"] = "raise"
    assert client.delete("/api/plain/", HTTP_IDEMPOTENCY_KEY="k1").status_code == 500
    assert Order.objects.count() == 0
    views.CONTROL["fail"] = None
    assert client.delete("/api/plain/", HTTP_IDEMPOTENCY_KEY="k1").status_code == 204
    assert Order.objects.count() == 1
