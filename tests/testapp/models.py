from __future__ import annotations

from django.db import models


class Order(models.Model):
    """The business row a guarded view writes: counting these counts side effects."""

    reference = models.CharField(max_length=100)
    amount = models.IntegerField(default=0)
    owner = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)


class Charge(models.Model):
    """What a fake external provider saw, keyed by the derived key it was sent."""

    derived_key = models.CharField(max_length=255, unique=True)
    amount = models.IntegerField(default=0)
