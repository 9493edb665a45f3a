"""The orders API: a DRF viewset guarded by ``IdempotentMixin``.

Session, token and basic authentication; the scope is computed after DRF has
authenticated the request, so each user's keys are their own.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, serializers, viewsets

from django_idempotency.drf import IdempotentMixin
from shop.models import PRICES, Order


class OrderSerializer(serializers.ModelSerializer):
    item = serializers.ChoiceField(choices=sorted(PRICES))
    quantity = serializers.IntegerField(min_value=1, max_value=100, default=1)

    class Meta:
        model = Order
        fields = ["id", "item", "quantity", "amount", "status", "charge", "operation"]
        read_only_fields = ["amount", "status", "charge", "operation"]


class OrderViewSet(
    IdempotentMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = OrderSerializer
    idempotent_actions = {"create"}

    def get_queryset(self) -> QuerySet[Order]:
        return Order.objects.filter(customer=self.request.user).order_by("-pk")

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        # Unguarded (no key): a stand-in no status URL knows, so no operation.
        operation = self.request.idempotency  # type: ignore[attr-defined]
        serializer.save(
            customer=self.request.user,
            amount=PRICES[data["item"]] * data["quantity"],
            operation=operation.id if operation.guarded else None,
        )
