"""Shared fixtures: the test views' control switches, JSON posting with a key, users,
problem answers, ATOMIC_REQUESTS."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from tests import pooler
from tests.testapp import views

# The suite also runs without Django REST framework (CI: DRF=0); tests of DRF views skip.
needs_drf = pytest.mark.skipif(
    importlib.util.find_spec("rest_framework") is None, reason="needs Django REST framework"
)


@pytest.fixture(autouse=True)
def reset_control() -> Iterator[None]:
    """The test views read ``views.CONTROL``; every test starts from the defaults."""
    saved = dict(views.CONTROL)
    yield
    views.CONTROL.clear()
    views.CONTROL.update(saved)


Post = Callable[..., Any]


def send(
    client: Client,
    path: str,
    data: Any = None,
    *,
    key: str | None = None,
    method: str = "post",
    content_type: str = "application/json",
    **headers: Any,
) -> Any:
    """Send ``data`` (a dict goes as JSON) with ``Idempotency-Key: key`` when given."""
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    body = json.dumps(data) if isinstance(data, (dict, list)) else (data or "")
    return getattr(client, method)(path, data=body, content_type=content_type, **headers)


@pytest.fixture
def post(client: Client) -> Post:
    """``post(path, data, key=...)`` through the test client."""

    def _post(path: str, data: Any = None, **kwargs: Any) -> Any:
        return send(client, path, data, **kwargs)

    return _post


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    problem = response.json()
    assert problem["type"].endswith(slug), problem
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem


@pytest.fixture
def atomic_requests(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


@pytest.fixture
def alice() -> User:
    """Two users of their own, for "never someone else's replay"."""
    return User.objects.create_user("alice", password="alice-pw")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob", password="bob-pw")


# Behind a PgBouncer (POOLER=transaction or session): its idle server sessions on
# the test databases must end before they can be dropped (tests/pooler.py).
@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings: None, django_db_blocker: Any
) -> list[tuple[str, str]]:
    if not pooler.POOLER:
        return []
    names = pooler.names_of_test_databases()
    with django_db_blocker.unblock():
        pooler.end_server_sessions(names)  # left by a killed run
    return names


@pytest.fixture(scope="session")
def django_db_setup(
    django_db_setup: None,
    django_db_modify_db_settings: list[tuple[str, str]],
    django_db_blocker: Any,
) -> Iterator[None]:
    yield
    if django_db_modify_db_settings:
        with django_db_blocker.unblock():
            pooler.end_server_sessions(django_db_modify_db_settings)
