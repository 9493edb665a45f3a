"""Migrations: none missing, whatever the project's settings; they apply and revert."""

from __future__ import annotations

from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.state import ProjectState
from django.test import override_settings

from django_idempotency.models import IdempotencyRecord
from tests.factories import IdempotencyRecordFactory

APP = "django_idempotency"


def pending_changes() -> dict:
    executor = MigrationExecutor(connection)
    autodetector = MigrationAutodetector(
        executor.loader.project_state(), ProjectState.from_apps(apps)
    )
    return autodetector.changes(graph=executor.loader.graph)


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration() -> None:
    changes = pending_changes()
    assert APP not in changes, changes.get(APP)


@pytest.mark.django_db
@override_settings(DEFAULT_AUTO_FIELD="django.db.models.AutoField")
def test_the_projects_default_auto_field_makes_no_migration() -> None:
    assert APP not in pending_changes()


@pytest.mark.django_db
def test_makemigrations_check_is_clean() -> None:
    out = StringIO()
    call_command("makemigrations", APP, "--check", "--dry-run", stdout=out, stderr=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_migrations_revert_and_apply_again() -> None:
    executor = MigrationExecutor(connection)
    leaf = executor.loader.graph.leaf_nodes(APP)
    executor.migrate([(APP, None)])
    try:
        assert IdempotencyRecord._meta.db_table not in connection.introspection.table_names()
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(leaf)
    assert IdempotencyRecord._meta.db_table in connection.introspection.table_names()
    IdempotencyRecordFactory(key="after-migrate")
    assert IdempotencyRecord.objects.filter(key="after-migrate").exists()


@pytest.mark.django_db
def test_scope_and_key_columns_compare_case_sensitively() -> None:
    """MySQL's default *_ci collations would make "abc" and "ABC" one key; the
    migration gives both columns a binary collation there."""
    IdempotencyRecordFactory(scope="Tenant", key="abc")
    IdempotencyRecordFactory(scope="tenant", key="abc")
    IdempotencyRecordFactory(scope="Tenant", key="ABC")
    assert IdempotencyRecord.objects.filter(scope="Tenant", key="abc").count() == 1
    assert IdempotencyRecord.objects.lookup("tenant", "abc").scope == "tenant"
    assert IdempotencyRecord.objects.lookup("Tenant", "ABC").key == "ABC"
    assert IdempotencyRecord.objects.lookup("TENANT", "abc") is None


@pytest.mark.django_db
def test_trailing_spaces_make_another_scope() -> None:
    """Scopes from a callable may end in a space (keys cannot)."""
    IdempotencyRecordFactory(scope="tenant", key="abc")
    assert IdempotencyRecord.objects.lookup("tenant ", "abc") is None
