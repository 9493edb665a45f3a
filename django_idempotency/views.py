"""Operation-status endpoint (placeholder until the status endpoint issue lands)."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse


def operation(request: HttpRequest, pk: object) -> HttpResponse:
    raise Http404


def operation_by_key(request: HttpRequest) -> HttpResponse:
    raise Http404
