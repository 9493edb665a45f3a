"""Guarded views for the concurrency tests (``tests/concurrency``).

Each test steers them through ``RACE``: how long to sleep inside the transaction, a
``Hold`` that stops the first caller at a chosen point until the test lets it go, a
barrier that proves two requests are inside their transactions at the same time.
Every order is created with ``reference`` from the JSON body, so a test counts the side
effects of one key with ``Order.objects.filter(reference=key)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from django_idempotency.decorators import idempotent
from tests.testapp.models import Charge, Order

GATE_TIMEOUT = 15.0
SHORT_LEASE = timedelta(milliseconds=500)

RACE: dict[str, Any] = {}


class Hold:
    """Stops the first request that reaches it until the test calls ``release()``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def release(self) -> None:
        self.gate.set()

    def wait_entered(self) -> None:
        if not self.entered.wait(GATE_TIMEOUT):
            raise AssertionError("no request reached the hold")

    def block(self) -> None:
        self.entered.set()
        if not self.gate.wait(GATE_TIMEOUT):
            raise RuntimeError("the test never released the hold")


def hold(name: str) -> None:
    """Block here if the test armed ``RACE[name]``; only the first caller blocks."""
    armed = RACE.pop(name, None)  # one pop wins, even between threads
    if armed is not None:
        armed.block()


def _payload(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _create(request: HttpRequest) -> Order:
    payload = _payload(request)
    order = Order.objects.create(
        reference=str(payload.get("reference", "")), amount=int(payload.get("amount", 0) or 0)
    )
    if RACE.get("sleep"):
        time.sleep(RACE["sleep"])
    return order


def _created(order: Order, **extra: Any) -> JsonResponse:
    response = JsonResponse({"id": order.pk, "reference": order.reference, **extra}, status=201)
    response["Location"] = f"/orders/{order.pk}/"
    return response


@idempotent
def two_phase(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(single_transaction=True)
def single(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(atomic=False)
def non_atomic(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


def _first_fails(request: HttpRequest) -> HttpResponse:
    order = _create(request)
    if RACE.pop("fail", False):  # only the first to get here
        return HttpResponse("upstream failed", status=502)
    return _created(order)


@idempotent
def first_fails_two_phase(request: HttpRequest) -> HttpResponse:
    return _first_fails(request)


@idempotent(single_transaction=True)
def first_fails_single(request: HttpRequest) -> HttpResponse:
    return _first_fails(request)


@idempotent(lease=SHORT_LEASE)
def held_two_phase(request: HttpRequest) -> HttpResponse:
    """Holds the first caller inside its execute transaction (record row-locked)."""
    hold("inside")
    return _created(_create(request), attempt=request.idempotency.attempt)  # type: ignore[attr-defined]


@idempotent(single_transaction=True, lease=SHORT_LEASE)
def held_single(request: HttpRequest) -> HttpResponse:
    hold("inside")
    return _created(_create(request), attempt=request.idempotency.attempt)  # type: ignore[attr-defined]


@idempotent(atomic=False, lease=timedelta(seconds=30))
def charge(request: HttpRequest) -> HttpResponse:
    """Calls a fake provider that deduplicates on the key it is sent (``Charge``)."""
    operation = request.idempotency  # type: ignore[attr-defined]
    hold("before_charge")
    derived = operation.derived_key("charge")
    charge_row, _ = Charge.objects.get_or_create(
        derived_key=derived, defaults={"amount": _payload(request).get("amount", 0)}
    )
    RACE.setdefault("provider_calls", []).append(derived)
    if RACE.get("checkpoint"):
        operation.checkpoint("charged")
    if RACE.pop("crash", False):
        raise RuntimeError("crashed after the external call")
    return JsonResponse(
        {"charge": charge_row.pk, "attempt": operation.attempt, "operation": str(operation.id)},
        status=201,
    )


@idempotent
def count_then_create(request: HttpRequest) -> HttpResponse:
    """Reads what other requests write: at SERIALIZABLE, concurrent ones conflict."""
    _meet()
    seen = Order.objects.count()
    return _created(_create(request), seen=seen)


def _crash_site(request: HttpRequest) -> HttpResponse:
    """Default lease: a retry that gets in early did not wait for it."""
    hold("inside")
    return _created(_create(request), attempt=request.idempotency.attempt)  # type: ignore[attr-defined]


crash_two_phase = idempotent(_crash_site)
crash_single = idempotent(single_transaction=True)(_crash_site)
crash_non_atomic = idempotent(atomic=False)(_crash_site)


def _meet() -> None:
    barrier = RACE.get("barrier")
    if barrier is not None:
        barrier.wait(GATE_TIMEOUT)


@idempotent
def meet_two_phase(request: HttpRequest) -> HttpResponse:
    """Waits inside its transaction until its partner (another key) is inside its own."""
    order = _create(request)
    _meet()
    return _created(order)


@idempotent(single_transaction=True)
def meet_single(request: HttpRequest) -> HttpResponse:
    order = _create(request)
    _meet()
    return _created(order)


@idempotent(atomic=False)
def meet_non_atomic(request: HttpRequest) -> HttpResponse:
    order = _create(request)
    _meet()
    return _created(order)


def _swap(request: HttpRequest) -> HttpResponse:
    """Updates two orders in the order the body names them: two requests naming them in
    opposite orders deadlock once both hold their first row."""
    payload = _payload(request)
    first, second = int(payload["first"]), int(payload["second"])
    Order.objects.filter(pk=first).update(amount=F("amount") + 1)
    _meet()
    Order.objects.filter(pk=second).update(amount=F("amount") + 1)
    return JsonResponse({"first": first, "second": second}, status=200)


@idempotent
def swap_two_phase(request: HttpRequest) -> HttpResponse:
    return _swap(request)


@idempotent(single_transaction=True)
def swap_single(request: HttpRequest) -> HttpResponse:
    return _swap(request)


def _grab(request: HttpRequest) -> HttpResponse:
    """Bumps a witness order, then locks an order another connection holds (``how``:
    ``nowait`` or ``timeout``); the witness shows whether the bump was rolled back."""
    payload = _payload(request)
    pk, how = int(payload["order"]), payload.get("how", "nowait")
    Order.objects.filter(pk=int(payload["witness"])).update(amount=F("amount") + 1)
    if how == "nowait":
        Order.objects.select_for_update(nowait=True).get(pk=pk)
    elif connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '50ms'")
        Order.objects.select_for_update().get(pk=pk)
    else:  # MariaDB / MySQL: the shortest InnoDB wait is one second
        with connection.cursor() as cursor:
            cursor.execute(
                "SET STATEMENT innodb_lock_wait_timeout=1 FOR "
                "SELECT id FROM testapp_order WHERE id = %s FOR UPDATE",
                [pk],
            )
    return JsonResponse({"order": pk}, status=200)


@idempotent
def grab_two_phase(request: HttpRequest) -> HttpResponse:
    return _grab(request)


@idempotent(single_transaction=True)
def grab_single(request: HttpRequest) -> HttpResponse:
    return _grab(request)


@idempotent(atomic=False)
def grab_non_atomic(request: HttpRequest) -> HttpResponse:
    """Its own short transaction: the view's lock conflict must not become a 500."""
    with transaction.atomic():
        return _grab(request)


urlpatterns = [
    path("race/two-phase/", two_phase),
    path("race/single/", single),
    path("race/non-atomic/", non_atomic),
    path("race/first-fails/two-phase/", first_fails_two_phase),
    path("race/first-fails/single/", first_fails_single),
    path("race/held/two-phase/", held_two_phase),
    path("race/held/single/", held_single),
    path("race/charge/", charge),
    path("race/count-then-create/", count_then_create),
    path("race/crash/two-phase/", crash_two_phase),
    path("race/crash/single/", crash_single),
    path("race/crash/non-atomic/", crash_non_atomic),
    path("race/meet/two-phase/", meet_two_phase),
    path("race/meet/single/", meet_single),
    path("race/meet/non-atomic/", meet_non_atomic),
    path("race/swap/two-phase/", swap_two_phase),
    path("race/swap/single/", swap_single),
    path("race/grab/two-phase/", grab_two_phase),
    path("race/grab/single/", grab_single),
    path("race/grab/non-atomic/", grab_non_atomic),
]


def _long_fingerprint(request: HttpRequest) -> str:
    """Longer than the fingerprint column (64): MySQL's INSERT IGNORE would cut it."""
    return "custom:" + hashlib.sha512(request.body).hexdigest()


@idempotent(fingerprint=_long_fingerprint)
def long_fingerprint(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


urlpatterns += [path("race/long-fingerprint/", long_fingerprint)]
