"""The views the clock-skew test's app servers serve.

Each guarded view appends a line to ``$SKEW_RUNS_DIR/<key>`` when its body starts, outside
the database, so a second run is counted even when its transaction rolls back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.utils import timezone

from django_idempotency.decorators import idempotent

SLEEP = 3.0


def _run(request: HttpRequest, mode: str) -> HttpResponse:
    runs = Path(os.environ["SKEW_RUNS_DIR"]) / request.headers["Idempotency-Key"]
    with runs.open("a") as file:
        file.write(f"{mode} pid={os.getpid()} time={time.time():.3f}\n")
    time.sleep(SLEEP)
    return JsonResponse({"mode": mode, "pid": os.getpid()}, status=201)


@idempotent(atomic=False)
def non_atomic(request: HttpRequest) -> HttpResponse:
    return _run(request, "non_atomic")


@idempotent
def two_phase(request: HttpRequest) -> HttpResponse:
    return _run(request, "two_phase")


def clock(request: HttpRequest) -> HttpResponse:
    """The server's own clock, so the test can see that the skew took effect."""
    return JsonResponse({"time": time.time(), "now": timezone.now().isoformat()})


urlpatterns = [
    path("non_atomic/", non_atomic),
    path("two_phase/", two_phase),
    path("clock/", clock),
]
