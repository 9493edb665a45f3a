from __future__ import annotations

from django.urls import include, path

from tests.testapp import views

urlpatterns = [
    path("idempotency/", include("django_idempotency.urls")),
    *views.urlpatterns,
    path("", include("tests.testapp.race_views")),
    path("fuzz/", include("tests.testapp.fuzz_views")),
    path("strategies/", include("tests.testapp.strategy_views")),
]
