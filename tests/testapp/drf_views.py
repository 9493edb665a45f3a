"""The DRF half of the test views (``IdempotentMixin`` on viewsets and APIViews): mounted by
``tests/urls.py`` only when Django REST framework is installed, so the rest of the suite
also runs without it."""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework import serializers, status, viewsets
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from django_idempotency.drf import IdempotentMixin
from tests.testapp.models import Order
from tests.testapp.views import CONTROL


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


class DenyAll(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return False


class AlwaysThrottled(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        return False

    def wait(self) -> float:
        return 7.0


class DeniedOrderView(IdempotentMixin, APIView):
    permission_classes = [DenyAll]

    def post(self, request: Any) -> Response:
        Order.objects.create(reference="denied")
        return Response({}, status=status.HTTP_201_CREATED)


class ThrottledOrderView(IdempotentMixin, APIView):
    throttle_classes = [AlwaysThrottled]

    def post(self, request: Any) -> Response:
        Order.objects.create(reference="throttled")
        return Response({}, status=status.HTTP_201_CREATED)


class ApiOrderView(IdempotentMixin, APIView):
    """A plain APIView guarding POST only; fails as ``CONTROL["fail"]`` says."""

    idempotent_actions = {"post"}

    def post(self, request: Any) -> Response:
        order = Order.objects.create(
            reference=str(request.data.get("reference", "")),
            owner=str(request.user.pk) if request.user.is_authenticated else "",
        )
        failure = CONTROL.get("fail")
        if failure == "raise":
            raise RuntimeError("the view failed")
        if failure == "drf-error":
            raise serializers.ValidationError({"reference": ["rejected after the write"]})
        if failure:
            return Response({"failed": True}, status=int(failure))
        return Response({"id": order.pk, "owner": order.owner}, status=status.HTTP_201_CREATED)

    def delete(self, request: Any) -> Response:
        Order.objects.create(reference="deleted")
        if CONTROL.get("fail") == "raise":
            raise RuntimeError("the view failed")
        return Response(status=status.HTTP_204_NO_CONTENT)


urlpatterns = [
    path("api/orders/", OrderViewSet.as_view({"get": "list", "post": "create"})),
    path(
        "api/orders/<int:pk>/",
        OrderViewSet.as_view({"get": "retrieve", "patch": "partial_update", "put": "update"}),
    ),
    path("api/validating/", ValidatingOrderView.as_view()),
    path("api/denied/", DeniedOrderView.as_view()),
    path("api/throttled/", ThrottledOrderView.as_view()),
    path("api/plain/", ApiOrderView.as_view()),
]
