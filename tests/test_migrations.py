"""Migrations: none missing, whatever the project's settings; they apply and revert."""

from __future__ import annotations

import importlib
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


HASH_MIGRATION = "0002_hash_session_scopes"


def historical_model(name: str) -> type:
    state = MigrationExecutor(connection).loader.project_state((APP, name))
    return state.apps.get_model(APP, "IdempotencyRecord")


def migrate_to(name: str) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([(APP, name)])


@pytest.mark.django_db(transaction=True)
def test_raw_session_scopes_are_rewritten_to_their_hash(monkeypatch) -> None:
    """Earlier versions stored ``session:<session key>``: a live credential. The data
    migration rewrites it to what ``by_user_or_session`` computes now, touches nothing
    else, deletes a raw row whose hashed twin exists, and does nothing a second time."""
    from django.test.utils import CaptureQueriesContext

    from django_idempotency import scopes

    migration = importlib.import_module(f"{APP}.migrations.{HASH_MIGRATION}")
    monkeypatch.setattr(migration, "BATCH", 2)
    leaf = MigrationExecutor(connection).loader.graph.leaf_nodes(APP)
    # The model as these migrations know it (later migrations add columns).
    record_model = historical_model(HASH_MIGRATION)
    monkeypatch.setattr(IdempotencyRecordFactory._meta, "model", record_model)
    migrate_to("0001_initial")
    try:
        raw = [IdempotencyRecordFactory(scope=f"session:guest{n}", key="k") for n in range(5)]
        twin_raw = IdempotencyRecordFactory(scope="session:retried", key="k")
        twin = IdempotencyRecordFactory(scope=scopes.session_scope("retried"), key="k")
        other_key = IdempotencyRecordFactory(scope=scopes.session_scope("guest0"), key="other")
        untouched = {
            record.pk: record.scope
            for record in [
                IdempotencyRecordFactory(scope="user:1", key="k"),
                IdempotencyRecordFactory(scope="anonymous", key="k"),
                IdempotencyRecordFactory(scope="tenant:session:x", key="k"),
                twin,
                other_key,
            ]
        }
        with CaptureQueriesContext(connection) as queries:
            migrate_to(HASH_MIGRATION)
        for record in raw:
            record.refresh_from_db()
        assert [r.scope for r in raw] == [scopes.session_scope(f"guest{n}") for n in range(5)]
        assert not record_model.objects.filter(pk=twin_raw.pk).exists()
        for pk, scope in untouched.items():
            assert record_model.objects.get(pk=pk).scope == scope
        assert not record_model.objects.filter(scope__contains="guest").exists()
        # Batched: a handful of statements per batch of 2, not per row.
        touching = [q for q in queries.captured_queries if "django_idempotency_record" in q["sql"]]
        assert len(touching) <= 5 * 4
        before = dict(record_model.objects.values_list("pk", "scope"))
        migrate_to("0001_initial")  # the reverse is a no-op: forward again finds nothing
        migrate_to(HASH_MIGRATION)
        assert dict(record_model.objects.values_list("pk", "scope")) == before
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(leaf)


def test_the_migration_hashes_as_the_scope_function_does(settings) -> None:
    from django_idempotency import scopes

    migration = importlib.import_module(f"{APP}.migrations.{HASH_MIGRATION}")
    for secret in ("tests-only", "another"):
        settings.SECRET_KEY = secret
        assert migration.hashed("session:abc") == scopes.session_scope("abc")
    assert migration.HASHED_PREFIX == scopes._SESSION_PREFIX
    assert migration.SALT == scopes._SESSION_SALT
