"""Fixtures for the concurrency tests: a clean ``RACE`` and the backend in use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection

from tests.testapp import race_views


@pytest.fixture(autouse=True)
def race() -> Iterator[dict[str, object]]:
    """``race_views.RACE``, empty before and after every test; holds are released."""
    race_views.RACE.clear()
    yield race_views.RACE
    for value in list(race_views.RACE.values()):
        if isinstance(value, race_views.Hold):
            value.release()
    race_views.RACE.clear()


@pytest.fixture
def vendor() -> str:
    return connection.vendor


@pytest.fixture
def row_locks(vendor: str) -> None:
    """Skip where the race needs row locks: SQLite has one writer for the whole file."""
    if vendor == "sqlite":
        pytest.skip("SQLite serialises writers; there are no row locks to race on")
