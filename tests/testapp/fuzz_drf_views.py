"""The DRF half of the fuzz and security views, mounted under ``/fuzz/`` next to
``fuzz_views`` only when Django REST framework is installed."""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency.drf import IdempotentMixin
from tests.testapp.fuzz_views import _who
from tests.testapp.models import Order


class OrderInput(serializers.Serializer[Any]):
    reference = serializers.CharField(max_length=100, required=False, default="")


class ApiOrders(IdempotentMixin, APIView):
    """DRF with token, basic and session auth (tests/settings.py), anonymous allowed."""

    permission_classes = [AllowAny]

    def post(self, request: Any) -> Response:
        serializer = OrderInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        order = Order.objects.create(
            reference=serializer.validated_data["reference"], owner=_who(request)[:100]
        )
        return Response({"order": order.pk, "who": _who(request)}, status=201)


urlpatterns = [
    path("api/", ApiOrders.as_view()),
]
