"""Every supported way of wiring the guard, one view per wiring and mode (``tests/test_wiring.py``).

Each view does the same business write: one ``Order`` with the body's ``reference`` and the
user it saw as ``owner``, so a test counts side effects (and whose they were) in rows.
``CONTROL["fail"]`` makes it fail after that write: ``"raise"`` raises ``ViewFailed``;
``"integrity"`` provokes an ``IntegrityError`` (a second ``Charge`` with the same unique
``derived_key``), catches it and answers 409 itself. ``CONTROL["depth"]`` is how many
atomic blocks the view ran inside: whether the ATOMIC_REQUESTS opt-out reached Django's
handler.

The DRF wirings are mounted only when Django REST framework is installed.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, connections, router, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path
from django.utils.decorators import method_decorator
from django.views import View

from django_idempotency.decorators import idempotent
from tests.testapp.models import Charge, Order

MODES: dict[str, dict[str, bool]] = {
    "two-phase": {},
    "single": {"single_transaction": True},
    "non-atomic": {"atomic": False},
}
PLAIN_WIRINGS = ("function", "async", "cbv-post", "cbv-dispatch")
DRF_WIRINGS = (
    "api_view-over-idempotent",
    "idempotent-over-api_view",
    "apiview-mixin",
    "viewset-mixin",
)
# Django's as_view() and DRF's api_view do not carry the guard's ATOMIC_REQUESTS opt-out
# to the URL's callback: under ATOMIC_REQUESTS these views run inside the request's
# transaction, where atomic=False cannot be made safe (system check E014).
NO_OPT_OUT = frozenset({"cbv-post", "api_view-over-idempotent"})
HAS_DRF = importlib.util.find_spec("rest_framework") is not None

CONTROL: dict[str, Any] = {"fail": None, "depth": None}


class ViewFailed(Exception):
    """The view's own failure, raised on purpose after its write."""


Result = tuple[int, dict[str, Any], dict[str, str]]


def _reference(request: Any) -> str:
    data = getattr(request, "data", None)
    if data is None:
        data = json.loads(request.body or b"{}")
    return str(data.get("reference", ""))


def _owner(user: Any) -> str:
    return str(user.username) if user is not None and user.is_authenticated else ""


def _depth() -> int:
    """How many atomic blocks the view runs inside, not counting a test case's."""
    blocks = connections[router.db_for_write(Order)].atomic_blocks
    return sum(1 for block in blocks if not getattr(block, "_from_testcase", False))


def _answer(order: Order) -> Result:
    CONTROL["depth"] = _depth()
    failure = CONTROL["fail"]
    if failure == "raise":
        raise ViewFailed(f"the view failed after writing order {order.pk}")
    if failure == "integrity":
        Charge.objects.create(derived_key=f"wiring:{order.pk}")
        try:
            Charge.objects.create(derived_key=f"wiring:{order.pk}")
        except IntegrityError:
            return 409, {"error": "duplicate charge"}, {}
    headers = {"Location": f"/orders/{order.pk}/", "X-Order": str(order.pk)}
    return 201, {"order": order.pk, "reference": order.reference, "owner": order.owner}, headers


def business(request: Any) -> Result:
    order = Order.objects.create(reference=_reference(request), owner=_owner(request.user))
    return _answer(order)


def as_json(result: Result) -> JsonResponse:
    status, data, headers = result
    response = JsonResponse(data, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def function_view(mode: str) -> Callable[..., Any]:
    @idempotent(**MODES[mode])
    def view(request: HttpRequest) -> HttpResponse:
        return as_json(business(request))

    return view


def async_view(mode: str) -> Callable[..., Any]:
    @idempotent(**MODES[mode])
    async def view(request: HttpRequest) -> HttpResponse:
        user = await request.auser()
        order = await Order.objects.acreate(reference=_reference(request), owner=_owner(user))
        return as_json(await sync_to_async(_answer)(order))

    return view


def cbv_view(mode: str, name: str) -> Callable[..., Any]:
    @method_decorator(idempotent(**MODES[mode]), name=name)
    class OrderView(View):
        def post(self, request: HttpRequest) -> HttpResponse:
            return as_json(business(request))

    return OrderView.as_view()


def probe(request: HttpRequest) -> HttpResponse:
    """Unguarded: whether Django's handler wrapped this request in ATOMIC_REQUESTS."""
    connection = connections[router.db_for_write(Order)]
    return JsonResponse({"in_atomic_block": connection.in_atomic_block})


FACTORIES: dict[str, Callable[[str], Callable[..., Any]]] = {
    "function": function_view,
    "async": async_view,
    "cbv-post": lambda mode: cbv_view(mode, "post"),
    "cbv-dispatch": lambda mode: cbv_view(mode, "dispatch"),
}

if HAS_DRF:
    from rest_framework import viewsets
    from rest_framework.authentication import (
        BasicAuthentication,
        SessionAuthentication,
        TokenAuthentication,
    )
    from rest_framework.decorators import api_view, authentication_classes, permission_classes
    from rest_framework.permissions import IsAuthenticated
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from django_idempotency.drf import IdempotentMixin

    AUTHENTICATION = [SessionAuthentication, BasicAuthentication, TokenAuthentication]

    def as_drf(result: Result) -> Response:
        status, data, headers = result
        return Response(data, status=status, headers=headers)

    def api_view_over_idempotent(mode: str) -> Callable[..., Any]:
        @api_view(["POST"])
        @authentication_classes(AUTHENTICATION)
        @permission_classes([IsAuthenticated])
        @idempotent(**MODES[mode])
        def view(request: Any) -> Response:
            return as_drf(business(request))

        return view  # type: ignore[no-any-return]

    def idempotent_over_api_view(mode: str) -> Callable[..., Any]:
        @idempotent(**MODES[mode])
        @api_view(["POST"])
        @authentication_classes(AUTHENTICATION)
        @permission_classes([IsAuthenticated])
        def view(request: Any) -> Response:
            return as_drf(business(request))

        return view  # type: ignore[no-any-return]

    def mixin_attributes(mode: str) -> dict[str, Any]:
        options = MODES[mode]
        return {
            "authentication_classes": AUTHENTICATION,
            "permission_classes": [IsAuthenticated],
            "idempotency_atomic": options.get("atomic", True),
            "idempotency_single_transaction": options.get("single_transaction", False),
        }

    def apiview_mixin(mode: str) -> Callable[..., Any]:
        def post(self: Any, request: Any) -> Response:
            return as_drf(business(request))

        cls = type(
            "OrderAPIView", (IdempotentMixin, APIView), {**mixin_attributes(mode), "post": post}
        )
        return cls.as_view()  # type: ignore[no-any-return]

    def viewset_mixin(mode: str) -> Callable[..., Any]:
        def create(self: Any, request: Any) -> Response:
            return as_drf(business(request))

        cls = type(
            "OrderViewSet",
            (IdempotentMixin, viewsets.ViewSet),
            {**mixin_attributes(mode), "create": create},
        )
        return cls.as_view({"post": "create"})  # type: ignore[no-any-return]

    FACTORIES.update(
        {
            "api_view-over-idempotent": api_view_over_idempotent,
            "idempotent-over-api_view": idempotent_over_api_view,
            "apiview-mixin": apiview_mixin,
            "viewset-mixin": viewset_mixin,
        }
    )


def route(wiring: str, mode: str) -> str:
    return f"wiring/{wiring}/{mode}/"


def opted_out_route(wiring: str) -> str:
    return f"wiring/opted-out/{wiring}/non-atomic/"


urlpatterns: list[URLPattern] = [path("wiring/probe/", probe)] + [
    path(route(wiring, mode), factory(mode), name=f"wiring-{wiring}-{mode}")
    for wiring, factory in FACTORIES.items()
    for mode in MODES
]
# E014's third remedy: the project opts the URL's view out itself.
urlpatterns += [
    path(opted_out_route(wiring), transaction.non_atomic_requests(FACTORIES[wiring]("non-atomic")))
    for wiring in sorted(NO_OPT_OUT & FACTORIES.keys())
]
