from __future__ import annotations

import importlib.util

from django.urls import include, path

from tests.testapp import views

urlpatterns = [
    path("idempotency/", include("django_idempotency.urls")),
    *views.urlpatterns,
    path("", include("tests.testapp.race_views")),
    path("fuzz/", include("tests.testapp.fuzz_views")),
    path("strategies/", include("tests.testapp.strategy_views")),
    path("", include("tests.testapp.wiring_views")),  # its DRF wirings only with DRF
]
if importlib.util.find_spec("rest_framework") is not None:  # the suite also runs without DRF
    urlpatterns += [
        path("", include("tests.testapp.drf_views")),
        path("fuzz/", include("tests.testapp.fuzz_drf_views")),
    ]
