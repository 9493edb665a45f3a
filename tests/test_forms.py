"""HTML forms: ``{% idempotency_key_field %}`` and the guard reading it when no header is sent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.template import Context, Template
from django.test import Client

from django_idempotency.models import IdempotencyRecord
from tests.conftest import needs_drf
from tests.testapp.models import Order
from tests.testapp.strategy_views import POSTS_SEEN

pytestmark = pytest.mark.django_db

CHECKOUT = "/strategies/checkout/"
FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]+)">')


def render_field() -> str:
    return Template("{% load idempotency %}{% idempotency_key_field %}").render(Context())


def form_key(client: Client) -> str:
    """Load the checkout page like a browser and read the key its form carries."""
    page = client.get(CHECKOUT).content.decode()
    keys = [value for name, value in FIELD.findall(page) if name == "idempotency_key"]
    assert len(keys) == 1, page
    return keys[0]


class TestTemplateTag:
    def test_renders_a_hidden_uuid4_field(self) -> None:
        match = FIELD.fullmatch(render_field())

        assert match is not None
        assert match.group(1) == "idempotency_key"
        assert uuid.UUID(match.group(2)).version == 4

    def test_every_render_gets_a_fresh_key(self) -> None:
        assert render_field() != render_field()

    def test_the_field_name_follows_the_setting(self, settings: Any) -> None:
        settings.IDEMPOTENCY = {"FORM_FIELD": "nonce"}
        match = FIELD.fullmatch(render_field())
        assert match is not None
        assert match.group(1) == "nonce"


class TestCheckoutForm:
    def test_a_double_submit_places_one_order_and_both_see_other_to_it(
        self, client: Client
    ) -> None:
        key = form_key(client)
        form = {"idempotency_key": key, "amount": "4200"}

        first = client.post(CHECKOUT, form)
        second = client.post(CHECKOUT, form)

        order = Order.objects.get()
        assert first.status_code == second.status_code == 303
        assert first["Location"] == second["Location"] == f"/strategies/orders/{order.pk}/"
        assert second["Idempotent-Replayed"] == "true"
        assert not first.has_header("Idempotent-Replayed")
        assert client.get(second["Location"]).content.count(b"Order #%d" % order.pk) == 1
        assert IdempotencyRecord.objects.get().key == key

    def test_a_reloaded_form_is_a_new_intent(self, client: Client) -> None:
        client.post(CHECKOUT, {"idempotency_key": form_key(client), "amount": "1"})
        client.post(CHECKOUT, {"idempotency_key": form_key(client), "amount": "1"})
        assert Order.objects.count() == 2

    def test_the_same_key_with_other_fields_is_422(self, client: Client) -> None:
        key = form_key(client)
        client.post(CHECKOUT, {"idempotency_key": key, "amount": "1"})
        response = client.post(CHECKOUT, {"idempotency_key": key, "amount": "2"})

        assert response.status_code == 422
        assert Order.objects.count() == 1

    def test_a_header_wins_over_the_field(self, client: Client) -> None:
        form_key(client)
        client.post(CHECKOUT, {"idempotency_key": "a", "amount": "1"}, HTTP_IDEMPOTENCY_KEY="h")
        client.post(CHECKOUT, {"idempotency_key": "b", "amount": "1"}, HTTP_IDEMPOTENCY_KEY="h")

        assert IdempotencyRecord.objects.get().key == "h"

    def test_two_key_fields_are_400(self, client: Client) -> None:
        form_key(client)
        response = client.post(CHECKOUT, {"idempotency_key": ["a", "b"], "amount": "1"})

        assert response.status_code == 400
        assert not Order.objects.exists()

    def test_a_form_without_the_field_is_not_deduplicated(self, client: Client) -> None:
        form_key(client)
        client.post(CHECKOUT, {"amount": "1"})
        client.post(CHECKOUT, {"amount": "1"})
        assert Order.objects.count() == 2

    def test_urlencoded_and_multipart_forms_both_carry_the_key(self, client: Client) -> None:
        key = form_key(client)
        for _ in range(2):  # a dict is sent as multipart/form-data
            client.post(CHECKOUT, {"idempotency_key": key, "amount": "3"})
        other = form_key(client)
        for _ in range(2):
            client.post(
                CHECKOUT,
                f"idempotency_key={other}&amount=3",
                content_type="application/x-www-form-urlencoded",
            )
        assert Order.objects.count() == 2
        assert IdempotencyRecord.objects.count() == 2

    def test_the_pay_posts_are_counted_for_the_browser_test(self, client: Client) -> None:
        POSTS_SEEN.clear()
        client.post(CHECKOUT, {"idempotency_key": form_key(client), "amount": "1"})
        assert len(POSTS_SEEN) == 1


SAMPLE_SITE = Path(__file__).resolve().parent.parent / "sample_site"
SAMPLE_CHECKOUT = """
import re, django
django.setup()
from django.core.management import call_command
from django.test import Client
call_command("migrate", verbosity=0)
from shop.models import Order
client = Client(HTTP_HOST="127.0.0.1")
page = client.get("/checkout/").content.decode()
key = re.search(r'name="idempotency_key" value="([^"]+)"', page).group(1)
answers = [client.post("/checkout/", {"idempotency_key": key, "item": "mug"}) for _ in range(2)]
print([a.status_code for a in answers], answers[0]["Location"] == answers[1]["Location"],
      answers[1].get("Idempotent-Replayed"), Order.objects.count(),
      "Order #%d" % Order.objects.get().pk in client.get(answers[1]["Location"]).content.decode())
"""


@needs_drf  # the sample site's settings install DRF
@pytest.mark.skipif(not SAMPLE_SITE.exists(), reason="no sample_site")
def test_the_sample_shops_checkout_places_one_order_per_form() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SAMPLE_CHECKOUT],
        cwd=SAMPLE_SITE,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "DATABASE_URL": "sqlite:///:memory:",
            "PYTHONPATH": os.pathsep.join([str(SAMPLE_SITE), str(SAMPLE_SITE.parent)]),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[303, 303] True true 1 True"
