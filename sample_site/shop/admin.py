from __future__ import annotations

from django.contrib import admin

from shop.models import Order, ProviderCharge


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "item", "quantity", "amount", "status", "customer", "created_at"]
    list_filter = ["status", "item"]
    readonly_fields = ["operation", "charge", "created_at"]


@admin.register(ProviderCharge)
class ProviderChargeAdmin(admin.ModelAdmin):
    list_display = ["id", "reference", "amount", "requests", "idempotency_key", "created_at"]
    search_fields = ["reference", "idempotency_key"]
