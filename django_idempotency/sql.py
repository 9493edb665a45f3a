"""The statements every guarded request runs, written once per database.

Building a query through the ORM took more CPU than anything else the package did per
request (``benchmarks/profile_modes.py``). The claim, lookup, row lock and finalize are
fixed statements over fixed columns, so they are built here once per database alias.
Results go through the fields' own converters, so a record reads as the ORM reads it;
parameters through the fields' own conversions, except where those only cost time
(``_sender``). Rarer writes (take-over, release, checkpoint, purge) stay on the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.models.constants import OnConflict

# Left out of the claim: always NULL there, and an untyped NULL in PostgreSQL's
# ``INSERT ... SELECT`` (the form that also bounds the lock wait) would not coerce.
NOT_CLAIMED = frozenset({"response_status", "response_body", "completed_at"})
# In this order in ``finalize``'s SET clause (``locked_until`` is set to NULL there).
FINALIZED = (
    "status",
    "response_status",
    "response_headers",
    "response_body",
    "completed_at",
    "expires_at",
)


class Statements:
    """One database's SQL for one model, with its parameter and result conversions."""

    def __init__(self, model: type[Model], connection: BaseDatabaseWrapper) -> None:
        self.model = model
        self.alias = connection.alias
        self.vendor = connection.vendor
        self.is_mariadb = bool(getattr(connection, "mysql_is_mariadb", False))
        self.supports_ignore = connection.features.supports_ignore_conflicts
        meta = model._meta
        ops = connection.ops
        fields = list(meta.concrete_fields)
        self.fields = {field.name: field for field in fields}
        self.names = [field.name for field in fields]
        self.claimed = [name for name in self.names if name not in NOT_CLAIMED]
        self.converters = []
        for field in fields:
            column = field.get_col(meta.db_table)
            self.converters.append(
                (ops.get_db_converters(column) + column.get_db_converters(connection), column)
            )

        self.as_text = {name for name in self.names if _sent_as_text(self.fields[name], connection)}
        self.senders = {field.name: _sender(field, connection) for field in fields}

        def q(name: str) -> str:
            return str(ops.quote_name(str(self.fields[name].column)))

        def mark(name: str) -> str:
            if self.vendor == "postgresql" and name in self.as_text:
                return f"CAST(%s AS {self.fields[name].cast_db_type(connection)})"
            return "%s"

        table = ops.quote_name(meta.db_table)
        columns = ", ".join(q(name) for name in self.names)
        claimed = ", ".join(q(name) for name in self.claimed)
        marks = ", ".join(mark(name) for name in self.claimed)
        insert = f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} {table} ({claimed})"
        ignore = ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None)
        self.insert = f"{insert} VALUES ({marks}) {ignore}".rstrip()
        self.lookup = f"SELECT {columns} FROM {table} WHERE {q('scope')} = %s AND {q('key')} = %s"
        self.bounded_insert = None
        if self.vendor == "postgresql":
            # The transaction-local lock_timeout is set by the row's own source, so it is
            # in force before the insert can wait on a duplicate's uncommitted row: one
            # statement instead of two.
            self.bounded_insert = (
                f"{insert} SELECT {marks} "
                f"WHERE set_config('lock_timeout', %s, true) IS NOT NULL {ignore}"
            )
        lock = f"SELECT {q('id')} FROM {table} WHERE {q('id')} = %s AND {q('lease_token')} = %s"
        features = connection.features
        self.lock = self.lock_nowait = lock
        if features.has_select_for_update:
            self.lock = f"{lock} {ops.for_update_sql()}"
            self.lock_nowait = (
                f"{lock} {ops.for_update_sql(nowait=features.has_select_for_update_nowait)}"
            )
        assignments = ", ".join(f"{q(name)} = {mark(name)}" for name in FINALIZED)
        self.finalize = (
            f"UPDATE {table} SET {assignments}, {q('locked_until')} = NULL "
            f"WHERE {q('id')} = %s AND {q('lease_token')} = %s AND {q('status')} = %s"
        )

    def claim_params(self, values: dict[str, Any], connection: BaseDatabaseWrapper) -> list[Any]:
        senders = self.senders
        return [senders[name](values[name], connection) for name in self.claimed]

    def finalize_params(
        self, values: dict[str, Any], fence: dict[str, Any], connection: BaseDatabaseWrapper
    ) -> list[Any]:
        """``values`` by ``FINALIZED`` for the SET clause, then ``fence`` for the WHERE."""
        senders = self.senders
        params = [senders[name](values[name], connection) for name in FINALIZED]
        return params + self.where_params(fence, connection)

    def where_params(self, values: dict[str, Any], connection: BaseDatabaseWrapper) -> list[Any]:
        fields = self.fields
        return [
            fields[name].get_db_prep_value(value, connection, prepared=False)
            for name, value in values.items()
        ]

    def instance(self, row: Sequence[Any], connection: BaseDatabaseWrapper) -> Any:
        """A model instance from a row of all columns, as the ORM would build it."""
        values = list(row)
        for index, (converters, column) in enumerate(self.converters):
            value = values[index]
            for converter in converters:
                value = converter(value, column, connection)
            values[index] = value
        return self.model.from_db(self.alias, self.names, values)


def _sent_as_text(field: Field[Any, Any], connection: BaseDatabaseWrapper) -> bool:
    """PostgreSQL datetimes go as ISO 8601 text with a CAST in the SQL: the driver's
    datetime adaptation, set up afresh on every Django cursor, cost ~30 us a value."""
    return connection.vendor == "postgresql" and field.get_internal_type() == "DateTimeField"


# Fields whose Python value is what every backend's driver takes, once it is a str or int.
AS_IS = frozenset({"CharField", "PositiveIntegerField", "PositiveSmallIntegerField"})


def _sender(field: Field[Any, Any], connection: BaseDatabaseWrapper) -> Callable[[Any, Any], Any]:
    """How a value of ``field`` becomes a parameter: the field's own conversion, except
    where it only spends time. The values are made by this package (str, int, datetimes
    from ``timezone.now()``), so a str or int conversion would have nothing to do."""
    if field.get_internal_type() in AS_IS:
        return _as_is
    if _sent_as_text(field, connection):
        return _isoformat
    return field.get_db_prep_save


def _as_is(value: Any, connection: BaseDatabaseWrapper) -> Any:
    return value


def _isoformat(value: Any, connection: BaseDatabaseWrapper) -> Any:
    return None if value is None else value.isoformat()


_statements: dict[tuple[str, type[Model]], Statements] = {}


def statements(model: type[Model], connection: BaseDatabaseWrapper) -> Statements:
    """The statements for ``connection``'s alias, built on first use.

    Rebuilt when the alias's vendor changes, so a test that points an alias at another
    database gets statements built for it.
    """
    built = _statements.get((connection.alias, model))
    if built is None or built.vendor != connection.vendor:
        built = _statements[(connection.alias, model)] = Statements(model, connection)
    return built


def lock_timeout(wait: timedelta) -> str:
    """``wait`` as a PostgreSQL ``lock_timeout`` value; never 0, which means no limit."""
    return f"{max(int(wait.total_seconds() * 1000), 1)}ms"
