"""The sample shop still starts: its settings import, its checks pass, its migrations are complete.

Run in a subprocess, because the sample has its own settings module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("rest_framework")
pytest.importorskip("dj_database_url")

SAMPLE_SITE = Path(__file__).resolve().parent.parent / "sample_site"


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DATABASE_URL": "sqlite:///:memory:",
        "PYTHONPATH": os.pathsep.join([str(SAMPLE_SITE), str(SAMPLE_SITE.parent)]),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SAMPLE_SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sample_site_passes_checks_and_has_its_migrations() -> None:
    result = manage("check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    result = manage("makemigrations", "shop", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


# Runs inside the sample's own settings: places orders through HTTP with Django's client.
PLACE_ORDERS = """
import base64, json, uuid
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

call_command("migrate", verbosity=0)
User.objects.create_user("buyer", password="pw")
client = Client(HTTP_HOST="localhost", enforce_csrf_checks=True)
basic = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"buyer:pw").decode()}
def order(url, key=None, **extra):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    body = '{"item": "mug"}'
    response = client.post(url, body, content_type="application/json", **headers, **extra)
    return response.status_code, response.json()
out = {
    "plain": order("/orders/"),
    "keyed": order("/orders/", str(uuid.uuid4())),
    "api_plain": order("/api/orders/", **basic),
    "api_keyed": order("/api/orders/", str(uuid.uuid4()), **basic),
}
def status(operation, method="get", **extra):
    response = getattr(client, method)(f"/idempotency/operations/{operation}/", **extra)
    return response.status_code, response["Content-Type"]
out["status"] = status(out["keyed"][1]["operation"])
out["api_status"] = status(out["api_keyed"][1]["operation"], **basic)
out["status_post"] = status(out["keyed"][1]["operation"], "post")
out["status_delete"] = status(out["keyed"][1]["operation"], "delete")
print("RESULT " + json.dumps(out))
"""


def test_an_order_without_a_key_names_no_operation_and_one_with_a_key_does() -> None:
    """Unguarded requests have no operation: the shop must not show an id that the
    status endpoint answers 404 for. Through HTTP, with the sample's CSRF middleware."""
    result = manage("shell", "-c", PLACE_ORDERS)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    for plain in ("plain", "api_plain"):
        status, body = out[plain]
        assert status == 201, body
        assert body["operation"] is None, plain
    for keyed in ("keyed", "api_keyed"):
        status, body = out[keyed]
        assert status == 201, body
        assert uuid.UUID(body["operation"]), keyed
    assert out["status"] == [200, "application/json"]
    assert out["api_status"] == [200, "application/json"]
    assert out["status_post"] == [405, "application/problem+json"]
    assert out["status_delete"] == [405, "application/problem+json"]


def test_the_shops_own_tests_use_the_test_kit() -> None:
    """``manage.py test shop``: django_idempotency.testing from Django's TestCase and
    TransactionTestCase on the shop's views, on this run's database server (a database
    of its own there, beside this run's test database)."""
    url = os.environ.get("DATABASE_URL", "sqlite:///:memory:")
    if not url.startswith("sqlite"):
        url = url.rstrip("/") + "_sample"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DATABASE_URL": url,
        "PYTHONPATH": os.pathsep.join([str(SAMPLE_SITE), str(SAMPLE_SITE.parent)]),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "test", "shop", "--noinput", "-v", "2"],
        cwd=SAMPLE_SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 5 tests" in result.stderr, result.stderr
