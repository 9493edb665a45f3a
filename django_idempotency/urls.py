from __future__ import annotations

from django.urls import path

from django_idempotency import views

app_name = "django_idempotency"

urlpatterns = [
    path("operations/", views.operation_by_key, name="operation-by-key"),
    path("operations/<uuid:pk>/", views.operation, name="operation"),
]
