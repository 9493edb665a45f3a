"""Natural keys and payload hashes: the intent's identity comes from the request itself.

"Set invoice 7 to paid" is one intent whoever sends it, so two clerks converge on one
execution when the key names the resource and its target state and the scope is the
tenant both belong to (see the comment block in ``tests/testapp/strategy_views.py``).
A webhook without an id is identified by its payload.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from django_idempotency.models import IdempotencyRecord
from tests.conftest import assert_problem, send
from tests.testapp.models import Charge, Order

pytestmark = pytest.mark.django_db
needs_drf = pytest.mark.skipif(
    importlib.util.find_spec("rest_framework") is None, reason="needs Django REST framework"
)


def member(username: str, tenant: str) -> Client:
    user = User.objects.create_user(username)
    group, _ = Group.objects.get_or_create(name=tenant)
    user.groups.add(group)
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, path: str, data: Any, **headers: Any) -> Any:
    return client.post(path, data=json.dumps(data), content_type="application/json", **headers)


@pytest.fixture
def invoice() -> Order:
    return Order.objects.create(reference="open", amount=100, owner="acme")


class TestNaturalKeyOnTheDecorator:
    def test_two_clerks_of_one_tenant_converge_on_one_payment(self, invoice: Order) -> None:
        alice, bob = member("alice", "acme"), member("bob", "acme")
        path = f"/strategies/invoices/{invoice.pk}/pay/"

        first = post(alice, path, {"amount": 100})
        second = post(bob, path, {"amount": 100})

        assert first.status_code == second.status_code == 200
        assert second["Idempotent-Replayed"] == "true"
        assert second.json() == first.json()
        assert first.json()["by"] == "alice"
        assert Charge.objects.count() == 1
        record = IdempotencyRecord.objects.get()
        assert (record.scope, record.key) == ("tenant:acme", f"invoice:{invoice.pk}:paid")

    def test_a_header_key_does_not_split_the_intent(self, invoice: Order) -> None:
        alice, bob = member("alice", "acme"), member("bob", "acme")
        path = f"/strategies/invoices/{invoice.pk}/pay/"

        post(alice, path, {"amount": 100}, HTTP_IDEMPOTENCY_KEY="alice-1")
        post(bob, path, {"amount": 100}, HTTP_IDEMPOTENCY_KEY="bob-1")

        assert Charge.objects.count() == 1

    def test_the_same_intent_with_another_payload_is_422(self, invoice: Order) -> None:
        alice, bob = member("alice", "acme"), member("bob", "acme")
        path = f"/strategies/invoices/{invoice.pk}/pay/"

        post(alice, path, {"amount": 100})
        response = post(bob, path, {"amount": 50})

        assert response.status_code == 422
        assert Charge.objects.count() == 1

    def test_another_invoice_is_another_intent(self, invoice: Order) -> None:
        other = Order.objects.create(reference="open", owner="acme")
        alice = member("alice", "acme")

        post(alice, f"/strategies/invoices/{invoice.pk}/pay/", {"amount": 100})
        post(alice, f"/strategies/invoices/{other.pk}/pay/", {"amount": 100})

        assert Charge.objects.count() == 2

    def test_an_outsider_is_refused_before_any_replay(self, invoice: Order) -> None:
        """Authorization sits above the guard: the stored answer never leaves the tenant."""
        alice, mallory = member("alice", "acme"), member("mallory", "evil")
        path = f"/strategies/invoices/{invoice.pk}/pay/"
        post(alice, path, {"amount": 100})

        response = post(mallory, path, {"amount": 100})

        assert response.status_code == 403
        assert b"alice" not in response.content
        assert not response.has_header("Idempotent-Replayed")
        assert post(Client(), path, {"amount": 100}).status_code == 403
        assert Charge.objects.count() == 1
        assert IdempotencyRecord.objects.count() == 1

    def test_global_scope_shares_the_key_across_everyone(self, invoice: Order) -> None:
        alice, bob = member("alice", "acme"), member("bob", "acme")
        path = f"/strategies/invoices/{invoice.pk}/pay-global/"

        post(alice, path, {"amount": 100})
        replay = post(bob, path, {"amount": 100})

        assert replay["Idempotent-Replayed"] == "true"
        assert Charge.objects.count() == 1
        assert IdempotencyRecord.objects.get().scope == "global"


@needs_drf
class TestNaturalKeyOnTheMixin:
    def test_get_idempotency_key_makes_two_clerks_converge(self, invoice: Order) -> None:
        alice, bob = member("alice", "acme"), member("bob", "acme")
        path = f"/strategies/api/invoices/{invoice.pk}/pay/"

        first = post(alice, path, {"amount": 100}, HTTP_IDEMPOTENCY_KEY="ignored")
        second = post(bob, path, {"amount": 100})

        assert first.status_code == second.status_code == 200
        assert second["Idempotent-Replayed"] == "true"
        assert (
            second.json()
            == first.json()
            == {
                "invoice": invoice.pk,
                "payment": Charge.objects.get().pk,
                "by": "alice",
            }
        )
        record = IdempotencyRecord.objects.get()
        assert (record.scope, record.key) == ("tenant:acme", f"invoice:{invoice.pk}:paid")

    def test_permissions_run_before_the_guard(self, invoice: Order) -> None:
        alice, mallory = member("alice", "acme"), member("mallory", "evil")
        path = f"/strategies/api/invoices/{invoice.pk}/pay/"
        post(alice, path, {"amount": 100})

        assert post(mallory, path, {"amount": 100}).status_code == 403
        assert post(Client(), path, {"amount": 100}).status_code in (401, 403)
        assert Charge.objects.count() == 1
        assert IdempotencyRecord.objects.count() == 1


@pytest.mark.parametrize(
    "path",
    ["/strategies/webhooks/", pytest.param("/strategies/api/webhooks/", marks=needs_drf)],
)
class TestPayloadHash:
    def test_identical_payloads_run_once(self, client: Client, path: str) -> None:
        event = {"event": "invoice.paid", "invoice": 7, "at": "2025-01-01T10:00:00Z"}

        first = post(client, path, event)
        again = post(client, path, event)

        assert first.status_code == again.status_code == 201
        assert again["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        assert Order.objects.count() == 1
        assert IdempotencyRecord.objects.get().key.startswith("payload:")

    def test_key_order_and_white_space_do_not_matter(self, client: Client, path: str) -> None:
        client.post(path, data='{"event": "a", "n": 1}', content_type="application/json")
        client.post(path, data='{ "n":1,\n "event":"a" }', content_type="application/json")

        assert Order.objects.count() == 1

    def test_different_payloads_run(self, client: Client, path: str) -> None:
        post(client, path, {"event": "invoice.paid", "invoice": 7})
        post(client, path, {"event": "invoice.paid", "invoice": 8})

        assert Order.objects.count() == 2
        assert IdempotencyRecord.objects.count() == 2


# The ``key=`` argument of ``@idempotent`` on tests/testapp/views.py: the shared ``post``
# fixture (path, data, key=...) stands for this module's ``post`` here.


def test_natural_key_needs_no_header(post) -> None:
    first = post("/invoices/7/pay/", {"amount": 1})
    again = post("/invoices/7/pay/", {"amount": 1}, key="the-header-is-ignored")
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert post("/invoices/8/pay/", {"amount": 1}).status_code == 201
    assert Order.objects.count() == 2
    assert sorted(IdempotencyRecord.objects.values_list("key", flat=True)) == [
        "invoice:7",
        "invoice:8",
    ]


def test_natural_key_with_another_payload_is_422(post) -> None:
    post("/invoices/7/pay/", {"amount": 1})
    assert_problem(post("/invoices/7/pay/", {"amount": 2}), 422, "idempotency-key-reused")


def test_payload_hash_key_dedupes_redeliveries(client) -> None:
    send(client, "/hooks/", '{"event": "paid", "id": 1}')
    again = send(client, "/hooks/", '{"id": 1, "event": "paid"}')
    assert again["Idempotent-Replayed"] == "true"
    assert send(client, "/hooks/", {"event": "paid", "id": 2}).status_code == 201
    assert Order.objects.count() == 2
    assert all(
        key.startswith("payload:")
        for key in IdempotencyRecord.objects.values_list("key", flat=True)
    )


def test_key_function_without_a_key_runs_unguarded(post) -> None:
    post("/orders/by-ref/", {})
    post("/orders/by-ref/", {})
    assert IdempotencyRecord.objects.count() == 0
    post("/orders/by-ref/?ref=r1", {})
    assert post("/orders/by-ref/?ref=r1", {})["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 3


def test_key_function_result_is_validated(post) -> None:
    response = post("/orders/by-ref/?ref=" + "x" * 300, {})
    assert_problem(response, 400, "idempotency-key-invalid")
    assert Order.objects.count() == 0
