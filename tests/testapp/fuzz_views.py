"""Views for the fuzz and security tests, mounted under ``/fuzz/``.

Each guarded view writes one ``Order`` so a test can count side effects, and answers
with something that identifies the attempt (the order id and who asked), so a replay
that crossed scopes or ran twice would show.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from django_idempotency.decorators import idempotent
from django_idempotency.scopes import by_user_or_session
from tests.testapp.models import Order

# Every header a guarded view might set that must never be stored or replayed.
PRIVATE_HEADERS = {
    "WWW-Authenticate": 'Bearer realm="api"',
    "Proxy-Authenticate": 'Basic realm="proxy"',
    "Connection": "close",
    "Keep-Alive": "timeout=5",
    "Proxy-Connection": "keep-alive",
    "Trailer": "X-Checksum",
    "Upgrade": "h2c",
    "Date": "Tue, 01 Jan 2030 00:00:00 GMT",
    "X-CSRFToken": "secret-csrf",
    "Authorization": "Bearer leaked",
}


def _who(request: Any) -> str:
    """Who the view ran for: the scope the guard computed for this attempt."""
    operation = getattr(request, "idempotency", None)
    return operation.scope if operation is not None else "unguarded"


def _answer(request: Any, order: Order, status: int = 201) -> JsonResponse:
    response = JsonResponse(
        {"order": order.pk, "who": _who(request), "ref": order.reference}, status=status
    )
    response["Location"] = f"/orders/{order.pk}/"
    return response


def _order(request: Any, rest: str = "") -> Order:
    """One business row per run; never reads the body, so any body reaches the guard."""
    # The view's own column cannot hold NUL on PostgreSQL either; only the guard is under test.
    reference = rest.replace("\x00", "")[:100]
    return Order.objects.create(reference=reference, owner=_who(request)[:100])


@idempotent
def two_phase(request: HttpRequest, rest: str = "") -> HttpResponse:
    return _answer(request, _order(request, rest))


@idempotent(single_transaction=True)
def single(request: HttpRequest, rest: str = "") -> HttpResponse:
    return _answer(request, _order(request, rest))


@idempotent
async def async_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    order = await Order.objects.acreate(reference=rest[:100], owner=_who(request)[:100])
    return _answer(request, order)


@idempotent(atomic=False)
def non_atomic(request: HttpRequest, rest: str = "") -> HttpResponse:
    operation = getattr(request, "idempotency", None)
    response = _answer(request, _order(request, rest))
    if operation is not None:
        response["X-Derived-Key"] = operation.derived_key("charge")
    return response


@idempotent(atomic=False)
def non_atomic_as_documented(request: HttpRequest) -> HttpResponse:
    """Uses ``request.idempotency`` the way docs/design.md section 4 shows it."""
    operation = request.idempotency  # type: ignore[attr-defined]
    response = _answer(request, _order(request))
    response["X-Derived-Key"] = operation.derived_key("charge")
    return response


@idempotent
def reads_body(request: HttpRequest) -> HttpResponse:
    """Reads the raw body: past DATA_UPLOAD_MAX_MEMORY_SIZE Django answers 400."""
    order = Order.objects.create(reference=str(len(request.body)), owner=_who(request)[:100])
    return _answer(request, order)


@idempotent
def big(request: HttpRequest) -> HttpResponse:
    """A body of ``?size=`` bytes: past MAX_RESPONSE_BYTES it is not stored."""
    order = _order(request)
    size = int(request.GET.get("size", "10"))
    response = HttpResponse(b"x" * size, status=201, content_type="application/octet-stream")
    response["Location"] = f"/orders/{order.pk}/"
    return response


@idempotent
def private_headers(request: HttpRequest) -> HttpResponse:
    """Sets cookies and every header that belongs to one client or one hop."""
    response = _answer(request, _order(request))
    response.set_cookie("sessionid-copy", "secret-cookie")
    response.set_cookie("tracking", "t1")
    for name, value in PRIVATE_HEADERS.items():
        response[name] = value
    response["X-Public"] = "kept"
    return response


@idempotent
def echo_headers(request: HttpRequest) -> HttpResponse:
    """Sets the response headers the JSON body names: for fuzzing the header allow-list."""
    response = _answer(request, _order(request))
    for name, value in json.loads(request.body)["headers"]:
        response[name] = value
    return response


@idempotent(scope=by_user_or_session)
def session_scoped(request: HttpRequest) -> HttpResponse:
    return _answer(request, _order(request))


urlpatterns = [
    path("two-phase/", two_phase),
    path("two-phase/<path:rest>", two_phase),
    path("single/", single),
    path("single/<path:rest>", single),
    path("async/", async_view),
    path("async/<path:rest>", async_view),
    path("non-atomic/", non_atomic),
    path("non-atomic/<path:rest>", non_atomic),
    path("non-atomic-documented/", non_atomic_as_documented),
    path("reads-body/", reads_body),
    path("big/", big),
    path("private-headers/", private_headers),
    path("echo-headers/", echo_headers),
    path("session/", session_scoped),
]
