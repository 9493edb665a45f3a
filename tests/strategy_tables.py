"""Fixtures for tests of the strategies beyond the header: the ``Article`` table.

Import the fixtures into a test module (``from tests.strategy_tables import articles``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from tests.testapp.strategy_models import Article


@pytest.fixture(scope="session")
def article_table(django_db_setup: Any, django_db_blocker: Any) -> None:
    """Create the table once per test database, outside any test's transaction."""
    with django_db_blocker.unblock():
        if Article._meta.db_table not in connection.introspection.table_names():
            with connection.schema_editor() as editor:
                editor.create_model(Article)


@pytest.fixture
def articles(article_table: None, django_db_blocker: Any) -> Iterator[type[Article]]:
    """The model; rows are removed afterwards (transactional tests do not flush it)."""
    yield Article
    with django_db_blocker.unblock():
        Article.objects.all().delete()
