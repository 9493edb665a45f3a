from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from shop import api, views

router = DefaultRouter()
router.register("orders", api.OrderViewSet, basename="api-order")

urlpatterns = [
    path("", views.index, name="index"),
    path("orders/", views.create_order, name="create-order"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
    path("orders/<int:pk>/pay/", views.pay_order, name="pay-order"),
    path("checkout/", include("shop.checkout")),
    path("api/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
    path("idempotency/", include("django_idempotency.urls")),
    path("admin/", admin.site.urls),
]
