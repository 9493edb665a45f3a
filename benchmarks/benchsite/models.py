from __future__ import annotations

from django.db import models


class Order(models.Model):
    """The overhead benchmark's business row."""

    reference = models.CharField(max_length=100)
    amount = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({self.reference})"


class Payment(models.Model):
    """The chaos suite's business row: deliberately *not* unique per intent, so a
    duplicate side effect would show up as a second row instead of an IntegrityError."""

    reference = models.CharField(max_length=100, db_index=True)
    amount = models.IntegerField(default=0)
    mode = models.CharField(max_length=20)
    charge = models.CharField(max_length=100, blank=True)
    operation = models.UUIDField(null=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"payment {self.pk} ({self.reference}, {self.mode})"
