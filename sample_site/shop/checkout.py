"""An HTML checkout a human can double-click: ``{% idempotency_key_field %}`` at work.

``GET /checkout/`` renders a form whose hidden field carries a fresh key; ``POST`` places
the order and answers ``303 See Other`` to its page. A second click (or a resent form)
carries the same key, waits for the first request's commit and gets the same ``303``:
one order, both tabs on the same page. Reloading ``/checkout/`` renders a new key, so a
deliberate second purchase is a new order.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.views.decorators.csrf import csrf_protect

from django_idempotency.decorators import idempotent
from django_idempotency.scopes import by_user_or_session
from shop.models import PRICES, Order


@csrf_protect
@idempotent(single_transaction=True, scope=by_user_or_session)
def checkout(request: HttpRequest) -> HttpResponse:
    """``single_transaction=True``: the second click waits for the first one's commit
    and replays its 303 (in the default two-phase mode it would get a 409 at once)."""
    if request.method != "POST":
        # A double click sends both POSTs before any answer could set a session
        # cookie, so the session (the guest's scope) must exist before the form.
        request.session["checkout"] = True
        return render(request, "shop/checkout.html", {"prices": PRICES})
    item = request.POST.get("item", "")
    if item not in PRICES:
        return render(
            request, "shop/checkout.html", {"prices": PRICES, "error": "Pick an item."}, status=400
        )
    order = Order.objects.create(
        customer=request.user if request.user.is_authenticated else None,
        item=item,
        amount=PRICES[item],
        status=Order.Status.PAID,
    )
    response = HttpResponse(status=303)  # See Other: the browser GETs the order page
    response["Location"] = reverse("checkout-done", args=[order.pk])
    return response


def done(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "shop/checkout_done.html", {"order": get_object_or_404(Order, pk=pk)})


urlpatterns = [
    path("", checkout, name="checkout"),
    path("<int:pk>/", done, name="checkout-done"),
]
