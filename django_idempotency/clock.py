"""The records' database's clock: the one clock every app server shares.

Every lease and expiry is written and compared on it, never on the app server's own
clock. Clocks on a fleet drift: a server running two minutes ahead would see a live
lease as dead and run the work a second time; one running behind would write a lease
that has already ended. The SQL here is written once per vendor: the hot statements
(``sql.py``) take the fragments, the ORM queries (``models.py``) take ``Now``.
Backends without a fragment here (Oracle, third-party ones) fall back to the app
server's clock: see ``supported``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DateTimeField, DurationField, Func, Value
from django.db.models.sql.compiler import SQLCompiler
from django.utils import timezone as django_timezone

VENDORS = ("postgresql", "mysql", "sqlite")
SQLITE_NOW = "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW'"


def supported(connection: BaseDatabaseWrapper) -> bool:
    return connection.vendor in VENDORS


def now_sql(connection: BaseDatabaseWrapper) -> str:
    """The current time on ``connection``'s server, as an SQL expression.

    PostgreSQL's ``STATEMENT_TIMESTAMP()`` (``now()`` would be the transaction's start,
    long past at the end of a single-transaction view); MySQL's ``UTC_TIMESTAMP(6)``,
    which unlike ``CURRENT_TIMESTAMP`` does not depend on the session's time zone, in
    the zone Django stores datetimes in; SQLite's ``'now'``, fixed within a statement.
    """
    vendor = connection.vendor
    if vendor == "postgresql":
        return "STATEMENT_TIMESTAMP()"
    if vendor == "mysql":
        zone = getattr(connection, "timezone_name", "UTC")
        if zone == "UTC":
            return "UTC_TIMESTAMP(6)"
        return f"CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', '{zone}')"
    if vendor == "sqlite":
        return f"{SQLITE_NOW})"
    raise NotImplementedError(vendor)


def after_sql(connection: BaseDatabaseWrapper) -> str:
    """``now_sql`` plus a duration given as one parameter (``duration_param``)."""
    vendor = connection.vendor
    if vendor == "postgresql":
        return "(STATEMENT_TIMESTAMP() + CAST(%s AS interval))"
    if vendor == "mysql":
        return f"({now_sql(connection)} + INTERVAL %s MICROSECOND)"
    if vendor == "sqlite":
        return f"{SQLITE_NOW}, %s)"
    raise NotImplementedError(vendor)


def duration_param(duration: timedelta, connection: BaseDatabaseWrapper) -> Any:
    microseconds = (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds
    vendor = connection.vendor
    if vendor == "postgresql":
        return f"{microseconds} microseconds"
    if vendor == "mysql":
        return microseconds
    return f"{microseconds / 1_000_000:+.6f} seconds"


class Now(Func):
    """The database's current time in ORM queries (``django.db.models.functions.Now``
    is ``CURRENT_TIMESTAMP`` on MySQL: the session's time zone, not the stored one)."""

    output_field = DateTimeField()

    def as_sql(  # type: ignore[override]
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, list[Any]]:
        if not supported(connection):
            return "%s", [self.output_field.get_db_prep_value(app_now(), connection)]
        return now_sql(connection), []


def after(duration: timedelta) -> Any:
    """``Now() + duration`` for ORM updates and filters."""
    return Now() + Value(duration, output_field=DurationField())


def read(alias: str) -> datetime:
    """The database's time now: one query, for what no hot statement decides (purge's
    fixed ``now``, the admin's columns, the status endpoint)."""
    connection = connections[alias]
    if not supported(connection):
        return app_now()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {now_sql(connection)}", [])
        return convert(cursor.fetchone()[0], connection)


def convert(value: Any, connection: BaseDatabaseWrapper) -> datetime:
    """A clock value as read from ``connection``, made what the ORM makes a DateTimeField."""
    expression = Now()
    for converter in connection.ops.get_db_converters(expression):
        value = converter(value, expression, connection)
    if django_timezone.is_naive(value):
        value = django_timezone.make_aware(value, timezone.utc)
    return value  # type: ignore[no-any-return]


def app_now() -> datetime:
    """The app server's clock: only for backends this module has no SQL for."""
    return django_timezone.now()
