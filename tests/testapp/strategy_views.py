"""Views for the strategies beyond the header: natural keys, payload hashes, conditional
updates and an HTML checkout form. Included under ``/strategies/`` by ``tests/urls.py``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from django_idempotency.conditional import conditional_update
from django_idempotency.decorators import idempotent
from django_idempotency.keys import payload_hash
from django_idempotency.scopes import by_user_or_session, global_scope
from tests.testapp.models import Charge, Order
from tests.testapp.strategy_models import Article
from tests.testapp.views import CONTROL

# --- natural keys ----------------------------------------------------------------------
#
# "Set invoice 7 to paid" is one intent whoever sends it: two clerks clicking "mark
# paid" must not record two payments. The key names the resource and the target state,
# so "paid" and a later "refunded" are different intents. Two things make this safe:
#
# 1. The scope is the set of principals allowed to act on the resource (the tenant),
#    not the user: scoped per user, the second clerk would run it again. A scope wider
#    than the authorization boundary (``global_scope``) is only right when everyone
#    who can reach the view may see every answer it stores.
# 2. Authorization runs *before* the guard (a decorator above ``@idempotent``; in DRF,
#    permissions run in ``initial()``): a replay skips the view, so a check inside it
#    would be skipped too, and an outsider would be handed the stored answer.
#
# Invoices are ``Order`` rows whose ``owner`` is the tenant's name; a user's tenant is
# the name of their first group. Each execution writes one ``Charge`` (the payment).


def tenant_of(user: Any) -> str | None:
    group = user.groups.order_by("pk").first() if user.is_authenticated else None
    return group.name if group is not None else None


def tenant_scope(request: Any) -> str:
    """Everyone in the tenant shares natural keys (and the answers stored under them)."""
    return f"tenant:{tenant_of(request.user)}"


def invoice_paid_key(request: Any) -> str:
    return f"invoice:{request.resolver_match.kwargs['pk']}:paid"


def tenant_member_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The authorization check, outside the guard so that it also runs before replays."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, pk: int) -> HttpResponse:
        tenant = tenant_of(request.user)
        if tenant is None or not Order.objects.filter(pk=pk, owner=tenant).exists():
            return HttpResponseForbidden("not your invoice")
        return view(request, pk)

    return wrapper


def _pay(request: HttpRequest, pk: int) -> JsonResponse:
    payload = json.loads(request.body or b"{}")
    invoice = Order.objects.select_for_update().get(pk=pk)
    invoice.reference = "paid"
    invoice.save(update_fields=["reference"])
    payment = Charge.objects.create(
        derived_key=f"payment:{uuid.uuid4()}", amount=int(payload.get("amount", 0))
    )
    return JsonResponse(
        {"invoice": pk, "status": "paid", "payment": payment.pk, "by": request.user.username}
    )


@tenant_member_required
@idempotent(key=invoice_paid_key, scope=tenant_scope)
def pay_invoice(request: HttpRequest, pk: int) -> HttpResponse:
    return _pay(request, pk)


@tenant_member_required
@idempotent(key=invoice_paid_key, scope=global_scope)
def pay_invoice_global(request: HttpRequest, pk: int) -> HttpResponse:
    """One scope for everyone: fine here only because the check above runs first."""
    return _pay(request, pk)


# --- payload hashes --------------------------------------------------------------------
#
# A webhook sender that retries without an id: the payload *is* the identity. Only
# right when two deliveries of equal payloads always mean the same event (the sender
# puts an event time or serial in it); otherwise two real, equal events would merge.


def webhook_scope(request: Any) -> str:
    return "webhook:provider"


@csrf_exempt
@idempotent(key=payload_hash, scope=webhook_scope)
def webhook(request: HttpRequest) -> HttpResponse:
    event = json.loads(request.body or b"{}")
    order = Order.objects.create(reference=str(event.get("event", "")), owner="webhook")
    return JsonResponse({"order": order.pk}, status=201)


# --- conditional updates ---------------------------------------------------------------


def _pause() -> None:
    """Hold the transaction open, so that competing writers overlap for real."""
    if CONTROL.get("sleep"):
        time.sleep(CONTROL["sleep"])


def order_etag(order: Order) -> str:
    """A computed ETag, for a model without a version field."""
    return hashlib.sha256(f"{order.reference}|{order.amount}".encode()).hexdigest()[:16]


def _article_json(article: Article) -> JsonResponse:
    return JsonResponse({"id": article.pk, "title": article.title, "version": article.version})


@csrf_exempt
@idempotent
@conditional_update(Article)
def article_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A plain view: the decorator checks If-Match and bumps; the view just writes."""
    article = get_object_or_404(Article, pk=pk)
    if request.method == "GET":
        return _article_json(article)
    if request.method == "DELETE":
        article.delete()
        return HttpResponse(status=204)
    payload = json.loads(request.body or b"{}")
    title = str(payload.get("title", ""))
    if not title:
        Article.objects.filter(pk=pk).update(body="written before the 400")
        return JsonResponse({"title": ["required"]}, status=400)
    article.title = title
    article.save()
    _pause()
    return _article_json(article)


@csrf_exempt
@conditional_update(Order, version_field=None, etag=order_etag, required=False)
def order_detail(request: HttpRequest, pk: int) -> HttpResponse:
    order = get_object_or_404(Order, pk=pk)
    if request.method in ("PUT", "PATCH"):
        order.reference = str(json.loads(request.body or b"{}").get("reference", ""))
        order.save()
    return JsonResponse({"id": order.pk, "reference": order.reference})


# --- HTML forms: a checkout page a human may double-click -------------------------------

POSTS_SEEN: list[str] = []
_seen_lock = threading.Lock()


def count_posts(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Records every POST that reaches the server, before the guard: the browser test
    checks that the double click really sent two requests."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            with _seen_lock:
                POSTS_SEEN.append(str(request.POST.get("idempotency_key", "")))
        return view(request, *args, **kwargs)

    return wrapper


@count_posts
@csrf_protect
@idempotent(single_transaction=True, scope=by_user_or_session)
def checkout(request: HttpRequest) -> HttpResponse:
    """GET shows the form; POST places the order and answers 303 to the order's page.

    ``single_transaction=True``: the second click's request waits for the first one's
    commit on the record's unique index and then replays its 303, so both land on the
    same page (with the default two-phase mode it would get a 409 at once).
    """
    if request.method != "POST":
        # The session must exist before the form is posted: a double click sends both
        # POSTs before either answer could set a session cookie.
        request.session["checkout"] = True
        return render(request, "strategies/checkout.html", {"amount": 4200})
    _pause()
    order = Order.objects.create(
        reference="checkout", amount=int(request.POST.get("amount", 0) or 0), owner="shop"
    )
    response = HttpResponse(status=303)  # See Other: the browser GETs the order page
    response["Location"] = reverse("strategies:order", kwargs={"pk": order.pk})
    return response


def order_page(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "strategies/order.html", {"order": get_object_or_404(Order, pk=pk)})


@csrf_exempt
def checkout_control(request: HttpRequest) -> HttpResponse:
    """For the browser test, whose server may run in another process: set the pause,
    reset the counters, and read the POSTs seen and the checkout orders placed."""
    if request.method == "POST":
        settings = json.loads(request.body or b"{}")
        CONTROL["sleep"] = float(settings.get("sleep", 0))
        if settings.get("reset"):
            with _seen_lock:
                POSTS_SEEN.clear()
            Order.objects.filter(reference="checkout").delete()
    orders = list(Order.objects.filter(reference="checkout").values_list("pk", flat=True))
    return JsonResponse({"posts": list(POSTS_SEEN), "orders": orders})


app_name = "strategies"
urlpatterns = [
    path("invoices/<int:pk>/pay/", pay_invoice, name="pay-invoice"),
    path("invoices/<int:pk>/pay-global/", pay_invoice_global),
    path("webhooks/", webhook),
    path("articles/<int:pk>/", article_detail),
    path("orders/<int:pk>/etag/", order_detail),
    path("checkout/", checkout, name="checkout"),
    path("orders/<int:pk>/", order_page, name="order"),
    path("checkout/control/", checkout_control),
]
if importlib.util.find_spec("rest_framework") is not None:  # the suite also runs without DRF
    from tests.testapp.strategy_drf_views import urlpatterns as drf_urlpatterns

    urlpatterns += drf_urlpatterns
