"""The chaos suite's "create payment" views, one per transaction mode.

Each view reports the phase its worker is in (a file per worker pid in
``CHAOS_STATE_DIR``) so the killer can aim SIGKILL at the windows that matter: inside
the business transaction, and between the external call and finalize. A request may
ask to be slow at one of those windows with ``X-Chaos-Sleep: <window>:<seconds>`` (a
header, so it is not part of the fingerprint).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from benchsite.models import Payment
from django_idempotency.decorators import idempotent

STATE_DIR = os.environ.get("CHAOS_STATE_DIR", "")
PROVIDER_URL = os.environ.get("CHAOS_PROVIDER_URL", "")


def phase(name: str) -> None:
    if STATE_DIR:
        with open(os.path.join(STATE_DIR, str(os.getpid())), "w") as state:
            state.write(name)


class PhaseMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        phase("busy")
        response = self.get_response(request)
        phase("idle")
        return response


def _sleep(request: HttpRequest, window: str) -> None:
    where, _, seconds = request.headers.get("X-Chaos-Sleep", "").partition(":")
    if where == window and seconds:
        time.sleep(float(seconds))


def _payload(request: HttpRequest) -> tuple[str, int]:
    payload = json.loads(request.body)
    return str(payload["reference"]), int(payload["amount"])


def _answer(payment: Payment, operation: Any) -> JsonResponse:
    response = JsonResponse(
        {
            "payment": payment.pk,
            "reference": payment.reference,
            "amount": payment.amount,
            "mode": payment.mode,
            "charge": payment.charge,
            "attempt": operation.attempt,
        },
        status=201,
    )
    response["Location"] = f"/payments/{payment.pk}/"
    return response


def charge_provider(derived_key: str, reference: str, amount: int) -> str:
    """The fake payment provider deduplicates on the Idempotency-Key we forward."""
    request = urllib.request.Request(
        PROVIDER_URL,
        data=json.dumps({"reference": reference, "amount": amount}).encode(),
        headers={"Idempotency-Key": derived_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return str(json.loads(answer.read())["charge"])


def _in_transaction(request: HttpRequest, mode: str) -> HttpResponse:
    reference, amount = _payload(request)
    operation = request.idempotency  # type: ignore[attr-defined]
    payment = Payment.objects.create(
        reference=reference, amount=amount, mode=mode, operation=operation.id
    )
    phase(f"{mode}:in-transaction")
    _sleep(request, "work")
    return _answer(payment, operation)


def pay_unguarded(request: HttpRequest) -> HttpResponse:
    """The negative control (``chaos.py --control``): the same work with no guard."""
    reference, amount = _payload(request)
    payment = Payment.objects.create(reference=reference, amount=amount, mode="unguarded")
    phase("unguarded:in-transaction")
    _sleep(request, "work")
    return _answer(payment, type("NoOperation", (), {"attempt": 1})())


@idempotent(required=True)
def pay_two_phase(request: HttpRequest) -> HttpResponse:
    return _in_transaction(request, "two_phase")


@idempotent(required=True, single_transaction=True)
def pay_single(request: HttpRequest) -> HttpResponse:
    return _in_transaction(request, "single")


@idempotent(required=True, atomic=False)
def pay_non_atomic(request: HttpRequest) -> HttpResponse:
    """Charge the provider, then record the payment and the checkpoint together.

    A retry that takes over after a crash forwards the same derived key (so the
    provider charges once) and, past the checkpoint, reuses the recorded payment.
    """
    reference, amount = _payload(request)
    operation = request.idempotency  # type: ignore[attr-defined]
    if operation.recovery_point == "recorded":
        payment = Payment.objects.filter(operation=operation.id).order_by("pk").first()
        assert payment is not None, "checkpoint without its payment"
        phase("non_atomic:recovered")
    else:
        charge = charge_provider(operation.derived_key("charge"), reference, amount)
        phase("non_atomic:charged")
        _sleep(request, "work")
        with transaction.atomic():
            payment = Payment.objects.create(
                reference=reference,
                amount=amount,
                mode="non_atomic",
                charge=charge,
                operation=operation.id,
            )
            operation.checkpoint("recorded")
        phase("non_atomic:recorded")
        _sleep(request, "recorded")
    return _answer(payment, operation)
