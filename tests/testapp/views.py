"""Views the tests drive: one per mode and per interesting response shape."""

from __future__ import annotations

import gzip
import json
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import connections, router
from django.db.transaction import non_atomic_requests
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path

from django_idempotency.decorators import idempotent
from django_idempotency.keys import payload_hash
from django_idempotency.models import IdempotencyRecord
from django_idempotency.scopes import by_user_or_session
from tests.testapp.models import Charge, Order

# Tests set these to steer the views (sleep inside the transaction, fail, ...).
CONTROL: dict[str, Any] = {"sleep": 0.0}


def _create(request: HttpRequest) -> Order:
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        payload = {}
    if CONTROL.get("sleep"):
        time.sleep(CONTROL["sleep"])
    owner = str(request.user.pk) if request.user.is_authenticated else ""
    return Order.objects.create(
        reference=str(payload.get("reference", "")),
        amount=int(payload.get("amount", 0) or 0),
        owner=owner,
    )


def _created(order: Order) -> JsonResponse:
    response = JsonResponse({"id": order.pk, "amount": order.amount}, status=201)
    response["Location"] = f"/orders/{order.pk}/"
    response["X-Order-Id"] = str(order.pk)
    response.set_cookie("tracking", "abc")
    return response


@idempotent
def create_order(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    return _created(_create(request))


@idempotent(required=True)
def create_order_required(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(single_transaction=True)
def create_order_single(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(atomic=False, lease=timedelta(seconds=2))
def charge(request: HttpRequest) -> HttpResponse:
    """Pretends to call a provider that deduplicates on the derived key."""
    operation = request.idempotency  # type: ignore[attr-defined]
    amount = json.loads(request.body or b"{}").get("amount", 0)
    charge_obj, _ = Charge.objects.get_or_create(
        derived_key=operation.derived_key("charge"), defaults={"amount": amount}
    )
    operation.checkpoint("charged")
    if CONTROL.get("sleep"):
        time.sleep(CONTROL["sleep"])
    if CONTROL.get("crash_after_charge"):
        raise RuntimeError("crashed after the external call")
    return JsonResponse({"charge": charge_obj.pk, "attempt": operation.attempt}, status=201)


@idempotent
def fail_order(request: HttpRequest) -> HttpResponse:
    _create(request)
    if CONTROL.get("raise"):
        raise RuntimeError("boom")
    return HttpResponse("upstream failed", status=502)


@idempotent
def reject_order(request: HttpRequest) -> HttpResponse:
    _create(request)
    return JsonResponse({"error": "out of stock"}, status=409)


@idempotent
def redirect_order(request: HttpRequest) -> HttpResponse:
    order = _create(request)
    response = HttpResponse(status=303)
    response["Location"] = f"/orders/{order.pk}/"
    return response


@idempotent
def stream_order(request: HttpRequest) -> StreamingHttpResponse:
    order = _create(request)
    size = int(CONTROL.get("stream_bytes", 10))
    return StreamingHttpResponse(
        iter([b"x" * size]), status=201, headers={"Location": f"/orders/{order.pk}/"}
    )


@idempotent
async def create_order_async(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    order = await Order.objects.acreate(reference=str(payload.get("reference", "")), amount=1)
    return JsonResponse({"id": order.pk}, status=201)


@idempotent
def plain_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{request.method} ok")


urlpatterns = [
    path("orders/", create_order, name="create-order"),
    path("orders/required/", create_order_required),
    path("orders/single/", create_order_single),
    path("orders/fail/", fail_order),
    path("orders/reject/", reject_order),
    path("orders/redirect/", redirect_order),
    path("orders/stream/", stream_order),
    path("orders/async/", create_order_async),
    path("orders/<int:pk>/pay/", create_order),
    path("charges/", charge),
    path("plain/", plain_view),
]


# Views added for the behavioural suite (tests/test_replay.py, test_mismatch.py, test_in_progress.py
# and the other files named for a state).


@idempotent
def headers_view(request: HttpRequest) -> HttpResponse:
    """Sets every kind of header: the allow-listed ones, its own X- ones, and the
    ones that must never be stored (per-client, per-hop)."""
    order = _create(request)
    response = JsonResponse({"id": order.pk}, status=201)
    response["Location"] = f"/orders/{order.pk}/"
    response["Content-Location"] = f"/orders/{order.pk}/"
    response["ETag"] = '"v1"'
    response["Last-Modified"] = "Wed, 21 Oct 2015 07:28:00 GMT"
    response["Link"] = '</orders/>; rel="collection"'
    response["X-Order-Id"] = str(order.pk)
    response["X-Custom"] = "kept"
    response["Cache-Control"] = "private"
    response["Date"] = "Wed, 21 Oct 2015 07:28:00 GMT"
    response["Vary"] = "Accept-Language"
    response["Connection"] = "close"
    response["Keep-Alive"] = "timeout=5"
    response["Transfer-Encoding"] = "chunked"
    response["Upgrade"] = "h2c"
    response["Trailer"] = "Expires"
    response["Proxy-Authenticate"] = "Basic"
    response["WWW-Authenticate"] = "Basic"
    response.set_cookie("tracking", "abc")
    return response


def _fail_if_told() -> HttpResponse | None:
    failure = CONTROL.get("fail")
    if failure == "raise":
        raise RuntimeError("the view failed")
    if failure:
        return HttpResponse("failed", status=int(failure))
    return None


@idempotent
def flaky_order(request: HttpRequest) -> HttpResponse:
    """Writes, then fails as ``CONTROL["fail"]`` says ("raise" or a status code)."""
    order = _create(request)
    return _fail_if_told() or _created(order)


def create_order_bare(request: HttpRequest) -> HttpResponse:
    """The unguarded twin of ``create_order``: the query budget's baseline."""
    return _created(_create(request))


@idempotent(atomic=False)
def create_order_nonatomic(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(scope=by_user_or_session)
def create_order_session(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent
def stream_chunks(request: HttpRequest) -> StreamingHttpResponse:
    """Streams ``CONTROL["chunks"]`` after a write; no Location header."""
    _create(request)
    return StreamingHttpResponse(iter(list(CONTROL.get("chunks", [b"abc"]))), status=201)


@idempotent
def atomic_probe(request: HttpRequest) -> HttpResponse:
    """Reports how many atomic blocks the view runs inside (ATOMIC_REQUESTS tests) and,
    with ``CONTROL["peek"]``, what another connection sees of the records meanwhile."""
    connection = connections[router.db_for_write(Order)]
    CONTROL["atomic_blocks"] = len(connection.atomic_blocks)
    if CONTROL.get("peek"):
        CONTROL["peeked"] = _from_another_connection(
            lambda: list(IdempotencyRecord.objects.values_list("status", flat=True))
        )
    return _created(_create(request))


def _from_another_connection(query: Any) -> Any:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(query())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0] if result else None


@non_atomic_requests
@idempotent
def atomic_probe_opted_out(request: HttpRequest) -> HttpResponse:
    """Like ``atomic_probe``, but the project opted the view out of ATOMIC_REQUESTS."""
    connection = connections[router.db_for_write(Order)]
    CONTROL["atomic_blocks"] = len(connection.atomic_blocks)
    return _created(_create(request))


@idempotent
async def flaky_order_async(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    order = await Order.objects.acreate(reference=str(payload.get("reference", "")), amount=1)
    return _fail_if_told() or JsonResponse({"id": order.pk}, status=201)


def _invoice_key(request: HttpRequest) -> str:
    return f"invoice:{request.resolver_match.kwargs['pk']}"  # type: ignore[union-attr]


@idempotent(key=_invoice_key)
def pay_invoice(request: HttpRequest, pk: int) -> HttpResponse:
    """A natural key: paying invoice 7 twice is one intent, whatever the client sends."""
    return _created(_create(request))


@idempotent(key=payload_hash)
def webhook(request: HttpRequest) -> HttpResponse:
    """A payload-hash key: the same delivery twice is one intent."""
    return _created(_create(request))


@idempotent(key=lambda request: request.GET.get("ref"))
def order_by_ref(request: HttpRequest) -> HttpResponse:
    """A key function that may find no key: then the request runs unguarded."""
    return _created(_create(request))


@idempotent(ttl=timedelta(minutes=5), lease=timedelta(seconds=30))
def short_lived(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(fingerprint=lambda request: "the same for every request")
def loose_fingerprint(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent(methods={"PUT"})
def put_only(request: HttpRequest) -> HttpResponse:
    return _created(_create(request))


@idempotent
def template_order(request: HttpRequest) -> TemplateResponse:
    """A lazily rendered response: it must be rendered before it is stored."""
    order = _create(request)
    template = engines["django"].from_string("<p>order {{ order.pk }} for {{ amount }}</p>")
    return TemplateResponse(request, template, {"order": order, "amount": order.amount}, status=201)


@idempotent
def encoded_download(request: HttpRequest) -> HttpResponse:
    """A body the view encoded itself, sent as a download."""
    order = _create(request)
    response = HttpResponse(
        gzip.compress(f"order {order.pk}".encode(), mtime=0), content_type="text/plain"
    )
    response["Content-Encoding"] = "gzip"
    response["Content-Language"] = "en"
    response["Content-Disposition"] = f'attachment; filename="order-{order.pk}.txt"'
    return response


urlpatterns += [
    path("orders/headers/", headers_view),
    path("orders/flaky/", flaky_order),
    path("orders/bare/", create_order_bare),
    path("orders/nonatomic/", create_order_nonatomic),
    path("orders/session/", create_order_session),
    path("orders/stream/chunks/", stream_chunks),
    path("orders/probe/", atomic_probe),
    path("orders/probe/opted-out/", atomic_probe_opted_out),
    path("orders/async/flaky/", flaky_order_async),
    path("invoices/<int:pk>/pay/", pay_invoice),
    path("hooks/", webhook),
    path("orders/by-ref/", order_by_ref),
    path("orders/short/", short_lived),
    path("orders/loose/", loose_fingerprint),
    path("orders/put-only/", put_only),
    path("orders/template/", template_order),
    path("orders/download/", encoded_download),
]
