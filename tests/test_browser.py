"""A human double-clicks "Pay" in a real headless Chromium: one order, one result page.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``) and Playwright for
Python (``pip install playwright``; never ``playwright install``: the system browser is
used). Skipped, with the reason, when either is missing.

The pages are served by pytest-django's ``live_server`` on PostgreSQL and MariaDB. With
SQLite in memory, ``live_server`` shares one connection among its request threads, so two
overlapping requests would share one transaction; there the tests serve the same views
from a ``runserver`` process on a migrated SQLite file instead. Either way the test reads
the server's state through ``/strategies/checkout/control/``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ORDER_PAGE = re.compile(r".*/strategies/orders/\d+/$")
ROOT = Path(__file__).resolve().parent.parent
IN_MEMORY_SQLITE = connection.vendor == "sqlite" and connection.is_in_memory_db()

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


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def control(self, **settings: Any) -> dict[str, Any]:
        """Set the checkout's pause (``sleep``) or ``reset``; read posts and orders."""
        data = json.dumps(settings).encode() if settings else None
        request = urllib.request.Request(
            f"{self.url}/strategies/checkout/control/",
            data=data,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            state: dict[str, Any] = json.loads(response.read())
        return state


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if IN_MEMORY_SQLITE:
        yield from _runserver(tmp_path_factory.mktemp("browser") / "db.sqlite3")
        return
    # pytest-django's live_server, started with a STATIC_URL: its static-files handler
    # cannot start without one (tests/settings.py sets none), so the session fixture is
    # requested here, after the override.
    with override_settings(STATIC_URL=settings.STATIC_URL or "/static/"):
        live_server = request.getfixturevalue("live_server")
    yield Server(str(live_server.url))


def _runserver(database: Path) -> Iterator[Server]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "PYTHONPATH": str(ROOT),
    }
    manage = [sys.executable, "-m", "django"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        served = Server(f"http://127.0.0.1:{port}")
        _wait_until(lambda: _answers(served), "the runserver process never answered")
        yield served
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(server: Server) -> bool:
    try:
        server.control()
    except OSError:
        return False
    return True


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    server.control(reset=True, sleep=0)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def _on_the_one_order_page(server: Server, page: Any) -> dict[str, Any]:
    """Wait for the page to land on an order page; assert one order exists and it is that
    one. Returns the server's state for further checks."""
    # When the second click's submit aborts the first navigation, wait_for_url fails with
    # ERR_ABORTED; expect() polls for where the page ends instead.
    playwright_api.expect(page).to_have_url(ORDER_PAGE)
    playwright_api.expect(page.locator("#order")).to_be_visible()
    state: dict[str, Any] = server.control()
    assert len(state["orders"]) == 1
    (order,) = state["orders"]
    assert page.url == f"{server.url}/strategies/orders/{order}/"
    assert page.inner_text("#order") == f"Order #{order}"
    return state


def test_double_clicking_pay_places_one_order(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/strategies/checkout/")

    page.dblclick("#pay")
    _on_the_one_order_page(server, page)


def test_a_second_click_while_the_first_is_processed_gets_the_same_page(
    server: Server, page: Any
) -> None:
    """The impatient double click: the second POST arrives while the first one still
    runs (the view holds its transaction open). It waits for the first to commit, then
    replays its 303, so the browser lands on the one order's page."""
    page.goto(f"{server.url}/strategies/checkout/")
    server.control(sleep=1.0)

    box = page.locator("#pay").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)  # raw input: no waiting for the navigation it starts
    _wait_until(lambda: len(server.control()["posts"]) == 1, "the first POST never arrived")
    page.mouse.click(x, y)
    state = _on_the_one_order_page(server, page)
    assert len(state["posts"]) == 2  # both clicks reached the server...
    assert len(set(state["posts"])) == 1  # ...with the form's one key


def test_a_reloaded_checkout_is_a_new_order(server: Server, page: Any) -> None:
    for _ in range(2):
        page.goto(f"{server.url}/strategies/checkout/")
        page.click("#pay")
        page.wait_for_url(ORDER_PAGE)

    assert len(server.control()["orders"]) == 2


def _wait_until(condition: Callable[[], bool], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(failure)
        time.sleep(0.02)
