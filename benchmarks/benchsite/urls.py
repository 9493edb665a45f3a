from __future__ import annotations

from django.urls import include, path

from benchsite import chaos_views, views

urlpatterns = [
    path("idempotency/", include("django_idempotency.urls")),
    path("health/", views.health),
    path("bare/", views.bare),
    path("two-phase/", views.two_phase),
    path("single/", views.single),
    path("non-atomic/", views.non_atomic),
    path("encrypted/", views.encrypted),
    path("cached/", views.cached),
    path("floor/two-phase/", views.floor_two_phase),
    path("floor/single/", views.floor_single),
    path("floor/non-atomic/", views.floor_non_atomic),
    path("floor/replay/", views.floor_replay),
    path("chaos/unguarded/", chaos_views.pay_unguarded),
    path("chaos/two-phase/", chaos_views.pay_two_phase),
    path("chaos/single/", chaos_views.pay_single),
    path("chaos/non-atomic/", chaos_views.pay_non_atomic),
]
