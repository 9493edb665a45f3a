"""A tiny shop: orders, and the ledger of a fake external payment provider."""

from __future__ import annotations

from django.conf import settings
from django.db import models

#: Price list in cents.
PRICES = {"coffee": 350, "mug": 1200, "beans": 1800}


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "New"
        PAID = "paid", "Paid"

    customer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="shop_orders",
    )
    item = models.CharField(max_length=50)
    quantity = models.PositiveIntegerField(default=1)
    amount = models.PositiveIntegerField(help_text="Total in cents.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.NEW)
    charge = models.ForeignKey(
        "ProviderCharge", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    operation = models.UUIDField(
        null=True, blank=True, help_text="The idempotent operation that created the order."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Order {self.pk}: {self.quantity} x {self.item}"


class ProviderCharge(models.Model):
    """What the payment provider recorded.

    Stands in for Stripe and friends, which live outside our database: it charges once
    per idempotency key it is sent and answers a repeated key with the first charge.
    """

    idempotency_key = models.CharField(max_length=255, unique=True)
    reference = models.CharField(max_length=100)
    amount = models.PositiveIntegerField(help_text="In cents.")
    requests = models.PositiveIntegerField(
        default=1, help_text="How many times this key was sent; the card is charged once."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Charge {self.pk} ({self.reference})"
