"""The shop's plain Django views: ``@idempotent`` on function views.

They take JSON and are CSRF-exempt so curl can drive them; a browser user logged in
through the admin is the customer, anyone else orders as a guest (scope ``anonymous``,
so guests must send unguessable keys such as UUIDs).
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from django_idempotency.decorators import idempotent
from shop import provider
from shop.models import PRICES, Order

MAX_SLEEP = 30.0


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.pk,
        "item": order.item,
        "quantity": order.quantity,
        "amount": order.amount,
        "status": order.status,
        "charge": order.charge_id,
        "operation": str(order.operation) if order.operation else None,
    }


def error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    orders = Order.objects.order_by("-pk")[:10]
    return render(request, "shop/index.html", {"prices": PRICES, "orders": orders})


@csrf_exempt
@require_POST
@idempotent
def create_order(request: HttpRequest) -> HttpResponse:
    """``{"item": "mug", "quantity": 2}`` -> 201 with the order; a retry replays it."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return error("the body must be JSON", 400)
    if not isinstance(data, dict):
        return error("the body must be a JSON object", 400)
    item, quantity = data.get("item"), data.get("quantity", 1)
    if item not in PRICES:
        return error(f"unknown item; choose one of {', '.join(sorted(PRICES))}", 400)
    if type(quantity) is not int or not 1 <= quantity <= 100:
        return error("quantity must be a whole number from 1 to 100", 400)
    # Without a key the request runs unguarded: request.idempotency is then a stand-in
    # (guarded False) that no status URL knows, so the order names no operation.
    operation = request.idempotency  # type: ignore[attr-defined]
    order = Order.objects.create(
        customer=request.user if request.user.is_authenticated else None,
        item=item,
        quantity=quantity,
        amount=PRICES[item] * quantity,
        operation=operation.id if operation.guarded else None,
    )
    response = JsonResponse(order_json(order), status=201)
    response["Location"] = reverse("order-detail", args=[order.pk])
    return response


@require_GET
def order_detail(request: HttpRequest, pk: int) -> HttpResponse:
    order = _visible_order(request, pk)
    if order is None:
        return error("no such order", 404)
    return JsonResponse(order_json(order))


@csrf_exempt
@require_POST
@idempotent(atomic=False, required=True)
def pay_order(request: HttpRequest, pk: int) -> HttpResponse:
    """Charge the order through the provider, once, however often the client retries.

    ``atomic=False``: the provider is outside our database, so no transaction of ours
    can undo its charge. The record keeps a lease while this runs; a retry after a
    failure or crash takes the operation over (``attempt`` 2, 3 ...) and sends the
    provider the same derived key, so the card is charged once.

    Demo knobs: ``?sleep=5`` pauses after the charge (send a duplicate meanwhile: 409);
    the header ``X-Demo-Fail: after-charge`` answers 502 after charging, as if the shop
    had crashed; retry without it.
    """
    operation = request.idempotency  # type: ignore[attr-defined]
    order = _visible_order(request, pk)
    if order is None:
        return error("no such order", 404)
    key = operation.derived_key("charge")
    if order.status == Order.Status.PAID and (
        order.charge is None or order.charge.idempotency_key != key
    ):
        return error("this order was already paid by another request", 409)
    charge = provider.charge(idempotency_key=key, amount=order.amount, reference=f"order:{pk}")
    operation.checkpoint("charged")
    _demo_pause(request)
    if request.headers.get("X-Demo-Fail") == "after-charge":
        return error("simulated crash after the charge; retry with the same key", 502)
    Order.objects.filter(pk=pk).update(status=Order.Status.PAID, charge=charge)
    order.refresh_from_db()
    charge.refresh_from_db()
    return JsonResponse(
        {
            "order": order_json(order),
            "charge": {"id": charge.pk, "amount": charge.amount, "requests": charge.requests},
            "attempt": operation.attempt,
        }
    )


def _visible_order(request: HttpRequest, pk: int) -> Order | None:
    """Guests' orders are open to anyone; a customer's only to that customer."""
    order = Order.objects.select_related("charge").filter(pk=pk).first()
    if order is None or order.customer_id is None:
        return order
    return order if order.customer_id == request.user.pk else None


def _demo_pause(request: HttpRequest) -> None:
    try:
        seconds = float(request.GET.get("sleep", 0))
    except ValueError:
        return
    if seconds > 0:
        time.sleep(min(seconds, MAX_SLEEP))
