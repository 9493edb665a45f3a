"""pytest fixtures for ``django_idempotency.testing``, registered through the ``pytest11``
entry point, so every project that installs the package has them.

pytest imports this module at start-up in every such project, before pytest-django has
configured any settings, and whether or not a test uses it: so it imports nothing of
Django or of the package until a fixture is requested, defines no hooks, and its fixture
names are prefixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django_idempotency.testing import IdempotencyChecks, Report

__all__ = ["idempotency_check", "idempotency_checks"]


def _database(request: pytest.FixtureRequest) -> None:
    """Database access through pytest-django's ``db`` fixture, when it is installed:
    it honours ``django_db(transaction=True)``, which the race needs."""
    if request.config.pluginmanager.hasplugin("django"):
        request.getfixturevalue("db")


@pytest.fixture
def idempotency_check(request: pytest.FixtureRequest) -> Callable[..., Report]:
    """``check_idempotent`` with database access: ``idempotency_check(client, "post",
    "/orders/", {"item": "mug"}, side_effects=Order.objects.count)``."""
    _database(request)
    from django_idempotency.testing import check_idempotent

    return check_idempotent


@pytest.fixture
def idempotency_checks(request: pytest.FixtureRequest) -> type[IdempotencyChecks]:
    """The ``IdempotencyChecks`` class with database access, for one check at a time:
    ``idempotency_checks(client, "post", "/orders/", data).race(8)``."""
    _database(request)
    from django_idempotency.testing import IdempotencyChecks

    return IdempotencyChecks
