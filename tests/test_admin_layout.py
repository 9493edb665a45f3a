"""The records changelist in a real headless Chromium at 1280 px: every column in view.

Nine columns beside the admin's navigation sidebar and filters used to scroll out of
sight, with keys wrapped to four lines. The page is rendered by Django's test client
(pages and static files both, through Playwright's request routing), so no server runs.
Skipped, with the reason, without Debian's ``chromium`` or Playwright for Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.apps import apps
from django.conf import settings
from django.test import Client
from django.urls import reverse

from django_idempotency.scopes import session_scope
from tests.factories import IdempotencyRecordFactory

CHROMIUM = Path("/usr/bin/chromium")
ORIGIN = "http://testserver"

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install -y chromium)"
    ),
    pytest.mark.django_db,
    pytest.mark.urls("tests.test_admin"),
]

GEOMETRY = """() => {
    const results = document.querySelector("#changelist .results");
    const edge = results.getBoundingClientRect().right;
    const headers = [...document.querySelectorAll("#result_list thead th")];
    const keys = [...document.querySelectorAll("#result_list tbody .field-key")];
    return {
        hidden: headers.filter(th => th.getBoundingClientRect().right > edge + 1)
            .map(th => th.innerText.trim()),
        scrolls: results.scrollWidth > results.clientWidth,
        keyLines: keys.map(cell => new Set(
            [...cell.querySelector("a").getClientRects()].map(line => Math.round(line.top))
        ).size),
        sidebar: !!document.querySelector("#nav-sidebar"),
    };
}"""


def static_file(name: str) -> Path | None:
    for app in apps.get_app_configs():
        candidate = Path(app.path) / "static" / name
        if candidate.is_file():
            return candidate
    return None


def measure(client: Client, *paths: str) -> dict[str, Any]:
    """Open the first of ``paths`` at 1280 px and measure it. The pages are rendered
    before Playwright starts: its event loop would give Django another connection."""
    rendered = {path: client.get(path) for path in paths}

    def serve(route: Any) -> None:
        path = urlsplit(route.request.url).path
        found = None
        if path.startswith(settings.STATIC_URL):
            found = static_file(path.removeprefix(settings.STATIC_URL))
        if found is not None:
            route.fulfill(path=str(found))
        elif path in rendered:
            answer = rendered[path]
            route.fulfill(
                status=answer.status_code, content_type=answer["Content-Type"], body=answer.content
            )
        else:
            route.fulfill(status=404)

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route(f"{ORIGIN}/**", serve)
            page.goto(ORIGIN + paths[0])
            shown: dict[str, Any] = page.evaluate(GEOMETRY)
        finally:
            browser.close()
    return shown


def test_every_column_is_in_view_at_1280_px(admin_client: Client) -> None:
    IdempotencyRecordFactory(completed=True, scope="user:1")
    IdempotencyRecordFactory(
        key="order-2026-12-02-customer-48213-a-long-natural-key",
        scope=session_scope("a" * 32),
        route="/api/tenants/acme/orders/123/line-items/",
    )
    changelist = reverse("admin:django_idempotency_idempotencyrecord_changelist")
    shown = measure(admin_client, changelist, reverse("admin:jsi18n"))
    assert shown["sidebar"], "the navigation sidebar takes its width, as on a real site"
    assert shown["hidden"] == []
    assert not shown["scrolls"]
    assert shown["keyLines"] == [1, 1]
