"""The status endpoint's URLs: ``path("idempotency/", include("django_idempotency.urls"))``.

The namespace is fixed, so ``202`` answers and ``409`` problems can point at the
endpoint wherever a project mounts it.
"""

from __future__ import annotations

from django.urls import path

from django_idempotency import views

__all__ = ["app_name", "urlpatterns"]

app_name = "django_idempotency"
"""The URL namespace, fixed: the package reverses its own URLs under it."""

urlpatterns = [
    path("operations/", views.operation_by_key, name="operation-by-key"),
    path("operations/<uuid:pk>/", views.operation, name="operation"),
]
"""``operations/?key=...`` (``operation-by-key``) and ``operations/<uuid>/`` (``operation``)."""
