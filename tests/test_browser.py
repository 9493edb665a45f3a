"""A human double-clicks "Pay" in a real headless Chromium: one order, one result page.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``) and Playwright for
Python (``pip install playwright``; never ``playwright install``: the system browser is
used). Skipped, with the reason, when either is missing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from tests.testapp.models import Order
from tests.testapp.strategy_views import POSTS_SEEN
from tests.testapp.views import CONTROL

CHROMIUM = Path("/usr/bin/chromium")
ORDER_PAGE = re.compile(r".*/strategies/orders/\d+/$")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install -y chromium)"
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Playwright's sync API keeps an event loop on this thread; Django would then refuse
    # the test's own (synchronous) ORM calls. The server runs in its own threads.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield browser
            browser.close()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> str:
    """pytest-django's ``live_server``, started with a ``STATIC_URL``.

    The live server's static-files handler cannot start without one (``tests/settings.py``
    sets none), so the session fixture is requested here, after the override.
    """
    with override_settings(STATIC_URL=settings.STATIC_URL or "/static/"):
        live_server = request.getfixturevalue("live_server")
    return str(live_server.url)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def test_double_clicking_pay_places_one_order(server: str, page: Any) -> None:
    page.goto(f"{server}/strategies/checkout/")

    page.dblclick("#pay")
    page.wait_for_url(ORDER_PAGE)

    order = Order.objects.get()
    assert page.url == f"{server}/strategies/orders/{order.pk}/"
    assert page.inner_text("#order") == f"Order #{order.pk}"
    assert order.amount == 4200


@pytest.mark.skipif(
    connection.vendor == "sqlite" and connection.is_in_memory_db(),
    reason="live_server shares one in-memory SQLite connection among its request threads, "
    "so two overlapping requests share one transaction; use a file database",
)
def test_a_second_click_while_the_first_is_processed_gets_the_same_page(
    server: str, page: Any
) -> None:
    """The impatient double click: the second POST arrives while the first one still
    runs (the view holds its transaction open). It waits for the first to commit, then
    replays its 303, so the browser lands on the one order's page."""
    page.goto(f"{server}/strategies/checkout/")
    POSTS_SEEN.clear()
    CONTROL["sleep"] = 1.0

    box = page.locator("#pay").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)  # raw input: no waiting for the navigation it starts
    _wait_until(lambda: len(POSTS_SEEN) == 1)
    page.mouse.click(x, y)
    # The first navigation is aborted by the second submit; wait for where it ends.
    playwright_api.expect(page).to_have_url(ORDER_PAGE)
    playwright_api.expect(page.locator("#order")).to_be_visible()

    order = Order.objects.get()
    assert page.url == f"{server}/strategies/orders/{order.pk}/"
    assert page.inner_text("#order") == f"Order #{order.pk}"
    assert len(POSTS_SEEN) == 2  # both clicks reached the server...
    assert len(set(POSTS_SEEN)) == 1  # ...with the form's one key


def test_a_reloaded_checkout_is_a_new_order(server: str, page: Any) -> None:
    for _ in range(2):
        page.goto(f"{server}/strategies/checkout/")
        page.click("#pay")
        page.wait_for_url(ORDER_PAGE)

    assert Order.objects.count() == 2


def _wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the server never saw the first POST")
        time.sleep(0.01)
