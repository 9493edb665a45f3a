"""``IdempotentMixin``: DRF authentication, permissions and throttles run first; DRF
errors release the key; ``idempotent_actions`` chooses what is guarded."""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth.models import User

pytest.importorskip("rest_framework", reason="Django REST framework is not installed")

from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from django_idempotency.models import IdempotencyRecord, Status
from tests.testapp import views
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


def token_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def basic_client(user: User, password: str) -> APIClient:
    client = APIClient()
    encoded = base64.b64encode(f"{user.username}:{password}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {encoded}")
    return client


def post(client: APIClient, path: str, data: dict, key: str | None = None, method="post"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return getattr(client, method)(path, data, format="json", **headers)


# Rejected before the claim: no record.


def test_401_from_authentication_leaves_no_record() -> None:
    response = post(APIClient(), "/api/orders/", {"reference": "r"}, key="k1")
    assert response.status_code == 401
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


def test_401_for_bad_credentials_leaves_no_record() -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert post(client, "/api/orders/", {"reference": "r"}, key="k1").status_code == 401
    assert IdempotencyRecord.objects.count() == 0


def test_403_from_permissions_leaves_no_record(alice) -> None:
    response = post(token_client(alice), "/api/denied/", {}, key="k1")
    assert response.status_code == 403
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


def test_429_from_throttles_leaves_no_record(alice) -> None:
    response = post(token_client(alice), "/api/throttled/", {}, key="k1")
    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


def test_the_key_works_once_authentication_succeeds(alice) -> None:
    assert post(APIClient(), "/api/orders/", {"reference": "r"}, key="k1").status_code == 401
    client = token_client(alice)
    assert post(client, "/api/orders/", {"reference": "r"}, key="k1").status_code == 201
    assert post(client, "/api/orders/", {"reference": "r"}, key="k1")["Idempotent-Replayed"] == (
        "true"
    )
    assert Order.objects.count() == 1


# Errors after the claim: writes rolled back, key released.


@pytest.mark.django_db(transaction=True)
def test_validation_error_after_a_write_rolls_back_and_releases() -> None:
    client = APIClient()
    response = post(client, "/api/validating/", {"reference": "r", "amount": -1}, key="k1")
    assert response.status_code == 400
    assert "amount" in response.json()
    assert Order.objects.count() == 0  # the "before-validation" row is gone
    assert IdempotencyRecord.objects.count() == 0

    again = post(client, "/api/validating/", {"reference": "r", "amount": -1}, key="k1")
    assert again.status_code == 400
    assert "Idempotent-Replayed" not in again

    fixed = post(client, "/api/validating/", {"reference": "r", "amount": 5}, key="k1")
    assert fixed.status_code == 201
    assert Order.objects.count() == 2  # "before-validation" and the order
    assert IdempotencyRecord.objects.get().status == Status.COMPLETED
    replay = post(client, "/api/validating/", {"reference": "r", "amount": 5}, key="k1")
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == fixed.json()
    assert Order.objects.count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", ["drf-error", "raise", "500", "503"])
def test_failures_in_an_apiview_release_the_key(failure: str) -> None:
    client = APIClient(raise_request_exception=False)
    views.CONTROL["fail"] = failure
    response = post(client, "/api/plain/", {"reference": "r"}, key="k1")
    expected = {"drf-error": 400, "raise": 500, "500": 500, "503": 503}[failure]
    assert response.status_code == expected
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0
    views.CONTROL["fail"] = None
    assert post(client, "/api/plain/", {"reference": "r"}, key="k1").status_code == 201
    assert Order.objects.count() == 1


def test_multipart_upload_in_drf() -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = APIClient()

    def upload(content: bytes):
        data = {"reference": "r", "file": SimpleUploadedFile("a.txt", content)}
        return client.post("/api/plain/", data, format="multipart", HTTP_IDEMPOTENCY_KEY="k1")

    first = upload(b"one")
    assert first.status_code == 201
    assert first.json()["id"] == Order.objects.get().pk  # the view still read request.data
    assert upload(b"one")["Idempotent-Replayed"] == "true"
    assert upload(b"two").status_code == 422
    assert Order.objects.count() == 1


def test_unparseable_body_is_400_and_releases() -> None:
    client = APIClient()
    response = client.post(
        "/api/plain/", "{not json", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert response.status_code == 400
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


def test_a_4xx_the_view_returns_itself_is_stored() -> None:
    client = APIClient()
    views.CONTROL["fail"] = "409"
    first = post(client, "/api/plain/", {"reference": "r"}, key="k1")
    views.CONTROL["fail"] = None
    again = post(client, "/api/plain/", {"reference": "r"}, key="k1")
    assert first.status_code == again.status_code == 409
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1


def test_mismatch_in_drf_is_422() -> None:
    client = APIClient()
    post(client, "/api/plain/", {"reference": "a"}, key="k1")
    response = post(client, "/api/plain/", {"reference": "b"}, key="k1")
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("idempotency-key-reused")


def test_malformed_key_in_drf_is_400() -> None:
    response = post(APIClient(), "/api/plain/", {"reference": "a"}, key='"a", "b"')
    assert response.status_code == 400
    assert response.json()["type"].endswith("idempotency-key-invalid")
    assert Order.objects.count() == 0


def test_json_key_order_replays_in_drf() -> None:
    client = APIClient()
    client.post(
        "/api/plain/",
        '{"reference": "a", "x": 1}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    again = client.post(
        "/api/plain/",
        '{"x":1,"reference":"a"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


# idempotent_actions.


def test_list_is_never_guarded(alice) -> None:
    client = token_client(alice)
    for _ in range(2):
        response = client.get("/api/orders/", HTTP_IDEMPOTENCY_KEY="k1")
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response
    assert IdempotencyRecord.objects.count() == 0


def test_create_is_guarded(alice) -> None:
    client = token_client(alice)
    first = post(client, "/api/orders/", {"reference": "r", "amount": 1}, key="k1")
    again = post(client, "/api/orders/", {"reference": "r", "amount": 1}, key="k1")
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.get().route == "/api/orders/"


def test_partial_update_is_guarded(alice) -> None:
    client = token_client(alice)
    order = Order.objects.create(reference="r", amount=1)
    path = f"/api/orders/{order.pk}/"
    first = post(client, path, {"amount": 2}, key="k1", method="patch")
    assert first.status_code == 200
    Order.objects.filter(pk=order.pk).update(amount=99)  # someone else changes it
    again = post(client, path, {"amount": 2}, key="k1", method="patch")
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["amount"] == 2
    assert Order.objects.get().amount == 99  # the retry did not write again
    assert IdempotencyRecord.objects.get().method == "PATCH"


def test_update_is_not_guarded(alice) -> None:
    client = token_client(alice)
    order = Order.objects.create(reference="r", amount=1)
    path = f"/api/orders/{order.pk}/"
    data = {"reference": "r", "amount": 2}
    assert post(client, path, data, key="k1", method="put").status_code == 200
    Order.objects.filter(pk=order.pk).update(amount=99)
    again = post(client, path, data, key="k1", method="put")
    assert "Idempotent-Replayed" not in again
    assert Order.objects.get().amount == 2
    assert IdempotencyRecord.objects.count() == 0


def test_apiview_guards_only_the_named_methods() -> None:
    client = APIClient()
    for _ in range(2):
        assert client.delete("/api/plain/", HTTP_IDEMPOTENCY_KEY="k1").status_code == 204
    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


def test_missing_key_in_drf_runs_unguarded(alice) -> None:
    client = token_client(alice)
    post(client, "/api/orders/", {"reference": "r"})
    post(client, "/api/orders/", {"reference": "r"})
    assert Order.objects.count() == 2
    assert IdempotencyRecord.objects.count() == 0


# Scope per authenticated user.


@pytest.mark.parametrize("auth", ["token", "basic"])
def test_users_are_scoped_per_user(auth: str, alice, bob) -> None:
    if auth == "token":
        alice_client, bob_client = token_client(alice), token_client(bob)
    else:
        alice_client, bob_client = basic_client(alice, "alice-pw"), basic_client(bob, "bob-pw")
    data = {"reference": "same", "amount": 1}
    alice_first = post(alice_client, "/api/orders/", data, key="shared")
    bob_first = post(bob_client, "/api/orders/", data, key="shared")
    assert alice_first.status_code == bob_first.status_code == 201
    assert "Idempotent-Replayed" not in bob_first
    assert alice_first.json()["owner"] == str(alice.pk)
    assert bob_first.json()["owner"] == str(bob.pk)
    assert Order.objects.count() == 2
    assert sorted(IdempotencyRecord.objects.values_list("scope", flat=True)) == sorted(
        [f"user:{alice.pk}", f"user:{bob.pk}"]
    )
    assert post(alice_client, "/api/orders/", data, key="shared").json() == alice_first.json()
    assert post(bob_client, "/api/orders/", data, key="shared").json() == bob_first.json()
    assert Order.objects.count() == 2


def test_token_user_scope_on_a_plain_apiview(alice) -> None:
    """The Django middleware sees an anonymous user; the scope must be DRF's user."""
    post(token_client(alice), "/api/plain/", {"reference": "r"}, key="k1")
    assert IdempotencyRecord.objects.get().scope == f"user:{alice.pk}"
    anonymous = post(APIClient(), "/api/plain/", {"reference": "r"}, key="k1")
    assert "Idempotent-Replayed" not in anonymous
    assert Order.objects.count() == 2
