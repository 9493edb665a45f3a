"""The shop's endpoints through django_idempotency.testing, with Django's own test runner
(``python manage.py test shop``; tests/test_sample_site.py runs it): the kit as a project
would use it from ``TestCase`` and ``TransactionTestCase``."""

from __future__ import annotations

import json

from django.contrib.auth.models import User
from django.test import Client, TestCase, TransactionTestCase
from rest_framework.test import APIClient

from django_idempotency.testing import IdempotencyChecks, check_idempotent, failing
from shop.models import Order, ProviderCharge


def api_client(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def new_order(_key: str) -> str:
    order = Order.objects.create(item="beans", quantity=1, amount=1800)
    return f"/orders/{order.pk}/pay/"


class OrdersTest(TestCase):
    def test_the_function_view_keeps_every_promise(self) -> None:
        alice = User.objects.create_user("alice")
        bob = User.objects.create_user("bob")
        self.client.force_login(alice)
        other = Client()
        other.force_login(bob)
        report = check_idempotent(
            self.client,
            "post",
            "/orders/",
            {"item": "mug", "quantity": 2},
            side_effects=Order.objects.count,
            status=201,
            other_client=other,
            fail=failing("shop.views.order_json"),
        )
        self.assertEqual(report.passed, ["replay", "key_reuse", "other_user", "failure"])

    def test_the_viewset_keeps_every_promise(self) -> None:
        alice = User.objects.create_user("alice")
        bob = User.objects.create_user("bob")
        report = check_idempotent(
            api_client(alice),
            "post",
            "/api/orders/",
            {"item": "coffee"},
            side_effects=Order.objects.count,
            other_client=api_client(bob),
            fail=failing("shop.api.OrderSerializer.save"),
        )
        self.assertEqual(report.passed, ["replay", "key_reuse", "other_user", "failure"])

    def test_a_crash_after_the_charge_charges_once(self) -> None:
        """atomic=False: the failed attempt charged; the retry takes the operation over
        and the provider answers the same derived key with the first charge."""
        checks = IdempotencyChecks(
            Client(), "post", new_order, side_effects=ProviderCharge.objects.count
        )
        retry = checks.failure(failing("shop.views._demo_pause"))
        self.assertEqual(json.loads(retry.body)["attempt"], 2)
        self.assertEqual(json.loads(retry.body)["charge"]["requests"], 2)


class OrdersRaceTest(TransactionTestCase):
    def test_duplicate_orders_at_once_place_one(self) -> None:
        report = check_idempotent(
            Client(), "post", "/orders/", {"item": "mug"}, side_effects=Order.objects.count, race=6
        )
        self.assertIsNotNone(report.race)

    def test_duplicate_payments_at_once_charge_once(self) -> None:
        checks = IdempotencyChecks(
            Client(), "post", new_order, side_effects=ProviderCharge.objects.count
        )
        race = checks.race(6)
        self.assertEqual(ProviderCharge.objects.count(), 2)  # the replay check's and the race's
        self.assertLessEqual(race.ran, 1)
