"""A fake payment provider that deduplicates charges on the key it is given."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from shop.models import ProviderCharge


def charge(*, idempotency_key: str, amount: int, reference: str) -> ProviderCharge:
    """Charge once per ``idempotency_key``; a repeated key gets the first charge back.

    The shop calls this outside its own transaction, as it would call a real provider
    over HTTP: a commit of ours cannot undo it, which is why the pay view runs with
    ``atomic=False`` and forwards a derived key.
    """
    with transaction.atomic():
        found, created = ProviderCharge.objects.get_or_create(
            idempotency_key=idempotency_key,
            defaults={"amount": amount, "reference": reference},
        )
        if not created:
            ProviderCharge.objects.filter(pk=found.pk).update(requests=F("requests") + 1)
    return found
