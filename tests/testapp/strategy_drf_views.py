"""The DRF half of the strategy views (``IdempotentMixin``, ``ConditionalUpdateMixin``):
included by ``strategy_views`` only when Django REST framework is installed."""

from __future__ import annotations

import uuid
from typing import Any

from django.urls import path
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_idempotency.drf import ConditionalUpdateMixin, IdempotentMixin
from django_idempotency.keys import payload_hash
from tests.testapp.models import Charge, Order
from tests.testapp.strategy_models import Article
from tests.testapp.strategy_views import _pause, order_etag, tenant_of, tenant_scope, webhook_scope

# --- natural keys ----------------------------------------------------------------------


class InvoicePermission(IsAuthenticated):
    def has_permission(self, request: Any, view: Any) -> bool:
        pk = view.kwargs.get("pk")
        tenant = tenant_of(request.user)
        return bool(
            super().has_permission(request, view)
            and tenant is not None
            and Order.objects.filter(pk=pk, owner=tenant).exists()
        )


class InvoiceViewSet(IdempotentMixin, viewsets.GenericViewSet[Order]):
    """The DRF form: the hooks derive key and scope; permissions run before the guard."""

    queryset = Order.objects.all()
    permission_classes = [InvoicePermission]

    def get_idempotency_key(self, request: Request) -> str | None:
        return f"invoice:{self.kwargs['pk']}:paid"

    def get_idempotency_scope(self, request: Request) -> str:
        return tenant_scope(request)

    @action(detail=True, methods=["post"])
    def pay(self, request: Request, pk: str) -> Response:
        payment = Charge.objects.create(
            derived_key=f"payment:{uuid.uuid4()}", amount=int(request.data.get("amount", 0))
        )
        return Response({"invoice": int(pk), "payment": payment.pk, "by": request.user.username})


# --- payload hashes --------------------------------------------------------------------


class WebhookView(IdempotentMixin, APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get_idempotency_key(self, request: Request) -> str | None:
        return payload_hash(request)

    def get_idempotency_scope(self, request: Request) -> str:
        return webhook_scope(request)

    def post(self, request: Request) -> Response:
        order = Order.objects.create(reference=str(request.data.get("event", "")), owner="drf")
        return Response({"order": order.pk}, status=201)


# --- conditional updates ---------------------------------------------------------------


class ArticleSerializer(serializers.ModelSerializer[Article]):
    class Meta:
        model = Article
        fields = ["id", "title", "body", "version"]
        read_only_fields = ["version"]


class WritableVersionSerializer(ArticleSerializer):
    class Meta(ArticleSerializer.Meta):
        read_only_fields: list[str] = []


class ArticleViewSet(IdempotentMixin, ConditionalUpdateMixin, viewsets.ModelViewSet[Article]):
    queryset = Article.objects.all()
    serializer_class = ArticleSerializer
    permission_classes = [AllowAny]

    def perform_update(self, serializer: Any) -> None:
        super().perform_update(serializer)
        _pause()

    @action(detail=True, methods=["post"])
    def publish(self, request: Request, pk: str) -> Response:
        article = self.get_object()
        article.title = article.title.upper()
        article.save()
        return Response(ArticleSerializer(article).data)


class ReversedArticleViewSet(
    ConditionalUpdateMixin, IdempotentMixin, viewsets.ModelViewSet[Article]
):
    """The mixins in the other order must behave the same."""

    queryset = Article.objects.all()
    serializer_class = ArticleSerializer
    permission_classes = [AllowAny]


class PlainArticleViewSet(ConditionalUpdateMixin, viewsets.ModelViewSet[Article]):
    queryset = Article.objects.all()
    serializer_class = WritableVersionSerializer
    permission_classes = [AllowAny]
    precondition_required = False


class OrderSerializer(serializers.ModelSerializer[Order]):
    class Meta:
        model = Order
        fields = ["id", "reference", "amount"]


class ComputedEtagOrderViewSet(
    ConditionalUpdateMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet[Order],
):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    permission_classes = [AllowAny]
    etag_version_field = None

    def get_etag(self, instance: Order) -> str:
        return order_etag(instance)

    def perform_update(self, serializer: Any) -> None:
        super().perform_update(serializer)
        _pause()


urlpatterns = [
    path("api/invoices/<int:pk>/pay/", InvoiceViewSet.as_view({"post": "pay"})),
    path("api/webhooks/", WebhookView.as_view()),
    path("api/articles/", ArticleViewSet.as_view({"get": "list", "post": "create"})),
    path(
        "api/articles/<int:pk>/",
        ArticleViewSet.as_view(
            {"get": "retrieve", "put": "update", "patch": "partial_update", "delete": "destroy"}
        ),
    ),
    path("api/articles/<int:pk>/publish/", ArticleViewSet.as_view({"post": "publish"})),
    path(
        "api/reversed-articles/<int:pk>/",
        ReversedArticleViewSet.as_view({"get": "retrieve", "patch": "partial_update"}),
    ),
    path(
        "api/plain-articles/<int:pk>/",
        PlainArticleViewSet.as_view({"get": "retrieve", "patch": "partial_update"}),
    ),
    path(
        "api/computed-orders/<int:pk>/",
        ComputedEtagOrderViewSet.as_view({"get": "retrieve", "patch": "partial_update"}),
    ),
]
