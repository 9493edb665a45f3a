"""Views the tests drive: one per mode and per interesting response shape."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from rest_framework import serializers, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency.decorators import idempotent
from django_idempotency.drf import IdempotentMixin
from tests.testapp.models import Charge, Order

# Tests set these to steer the views (sleep inside the transaction, fail, ...).
CONTROL: dict[str, Any] = {"sleep": 0.0}


def _create(request: HttpRequest) -> Order:
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        payload = {}
    if CONTROL.get("sleep"):
        time.sleep(CONTROL["sleep"])
    owner = str(request.user.pk) if request.user.is_authenticated else ""
    return Order.objects.create(
        reference=str(payload.get("reference", "")),
        amount=int(payload.get("amount", 0) or 0),
        owner=owner,
    )


def _created(order: Order) -> JsonResponse:
    response = JsonResponse({"id": order.pk, "amount": order.amount}, status=201)
    response["Location"] = f"/orders/{order.pk}/"
    response["X-Order-Id"] = str(order.pk)
    response.set_cookie("tracking", "abc")
    return response


@idempotent
def create_order(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(required=True)
def create_order_required(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(single_transaction=True)
def create_order_single(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(atomic=False, lease=timedelta(seconds=2))
def charge(request: HttpRequest) -> HttpResponse:
    """Pretends to call a provider that deduplicates on the derived key."""
    operation = request.idempotency  # type: ignore[attr-defined]
    amount = json.loads(request.body or b"{}").get("amount", 0)
    charge_obj, _ = Charge.objects.get_or_create(
        derived_key=operation.derived_key("charge"), defaults={"amount": amount}
    )
    operation.checkpoint("charged")
    if CONTROL.get("sleep"):
        time.sleep(CONTROL["sleep"])
    if CONTROL.get("crash_after_charge"):
        raise RuntimeError("crashed after the external call")
    return JsonResponse({"charge": charge_obj.pk, "attempt": operation.attempt}, status=201)


@idempotent
def fail_order(request: HttpRequest) -> HttpResponse:
    _create(request)
    if CONTROL.get("raise"):
        raise RuntimeError("boom")
    return HttpResponse("upstream failed", status=502)


@idempotent
def reject_order(request: HttpRequest) -> HttpResponse:
    _create(request)
    return JsonResponse({"error": "out of stock"}, status=409)


@idempotent
def redirect_order(request: HttpRequest) -> HttpResponse:
    order = _create(request)
    response = HttpResponse(status=303)
    response["Location"] = f"/orders/{order.pk}/"
    return response


@idempotent
def stream_order(request: HttpRequest) -> StreamingHttpResponse:
    order = _create(request)
    size = int(CONTROL.get("stream_bytes", 10))
    return StreamingHttpResponse(
        iter([b"x" * size]), status=201, headers={"Location": f"/orders/{order.pk}/"}
    )


@idempotent
async def create_order_async(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    order = await Order.objects.acreate(reference=str(payload.get("reference", "")), amount=1)
    return JsonResponse({"id": order.pk}, status=201)


@idempotent
def plain_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{request.method} ok")


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "reference", "amount", "owner"]
        read_only_fields = ["owner"]

    def validate_amount(self, value: int) -> int:
        if value < 0:
            raise serializers.ValidationError("must not be negative")
        return value


class OrderViewSet(IdempotentMixin, viewsets.ModelViewSet):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    idempotent_actions = {"create", "partial_update"}
    permission_classes = [IsAuthenticated]

    def perform_create(self, serializer: Any) -> None:
        serializer.save(owner=str(self.request.user.pk))


class ValidatingOrderView(IdempotentMixin, APIView):
    """Writes a row, then fails validation: the write must roll back."""

    def post(self, request: Any) -> Response:
        Order.objects.create(reference="before-validation")
        serializer = OrderSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data, status=status.HTTP_201_CREATED)


urlpatterns = [
    path("orders/", create_order, name="create-order"),
    path("orders/required/", create_order_required),
    path("orders/single/", create_order_single),
    path("orders/fail/", fail_order),
    path("orders/reject/", reject_order),
    path("orders/redirect/", redirect_order),
    path("orders/stream/", stream_order),
    path("orders/async/", create_order_async),
    path("orders/<int:pk>/pay/", create_order),
    path("charges/", charge),
    path("plain/", plain_view),
    path("api/orders/", OrderViewSet.as_view({"get": "list", "post": "create"})),
    path(
        "api/orders/<int:pk>/",
        OrderViewSet.as_view({"get": "retrieve", "patch": "partial_update", "put": "update"}),
    ),
    path("api/validating/", ValidatingOrderView.as_view()),
]
