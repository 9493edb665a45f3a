"""The statements every guarded request runs, written once per database.

Building a query through the ORM took more CPU than anything else the package did per
request (``benchmarks/profile_modes.py``). The claim, lookup, row lock, finalize,
release and unlock are fixed statements over fixed columns, so they are built here once
per database alias. Results go through the fields' own converters, so a record reads
as the ORM reads it; parameters through the fields' own conversions, except where those
only cost time (``_sender``). Every time they write or compare is the database's
(``clock``): the claim and finalize compute ``locked_until`` and ``expires_at`` in SQL,
and the lookup returns the database's time beside the record it read. Rarer writes
(take-over, checkpoint, purge) stay on the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model
from django.db.models.constants import OnConflict

from django_idempotency import clock

# Left out of the claim: always NULL there, and an untyped NULL in PostgreSQL's
# ``INSERT ... SELECT`` (the form that also bounds the lock wait) would not coerce.
NOT_CLAIMED = frozenset({"response_status", "response_body", "completed_at"})
# Written by the database's clock: now, or (the lease, the TTL) now plus an offset.
STARTED = frozenset({"created_at", "claimed_at"})
CLOCKED = STARTED | {"locked_until", "expires_at"}
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

        self.clocked = clock.supported(connection)
        now = clock.now_sql(connection) if self.clocked else "%s"

        def mark(name: str) -> str:
            if self.clocked and name in CLOCKED:
                return now if name in STARTED else clock.after_sql(connection)
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
        # The database's time comes with the record, so the retry's decisions (expired?
        # lease live? Retry-After) cost no statement and no app-server clock.
        read = f"{columns}, {now}" if self.clocked else columns
        self.lookup = f"SELECT {read} FROM {table} WHERE {q('scope')} = %s AND {q('key')} = %s"
        self.bounded_insert = None
        if self.vendor == "postgresql":
            # The transaction-local lock_timeout is set by the row's own source, so it is
            # in force before the insert can wait on a duplicate's uncommitted row: one
            # statement instead of two.
            self.bounded_insert = (
                f"{insert} SELECT {marks} "
                f"WHERE set_config('lock_timeout', %s, true) IS NOT NULL {ignore}"
            )
        leased = f"FROM {table} WHERE {q('id')} = %s AND {q('lease_token')} = %s"
        lock = f"SELECT {q('id')} {leased}"
        features = connection.features
        self.lock = self.lock_nowait = lock
        if features.has_select_for_update:
            self.lock = f"{lock} {ops.for_update_sql()}"
            self.lock_nowait = (
                f"{lock} {ops.for_update_sql(nowait=features.has_select_for_update_nowait)}"
            )
        assignments = ", ".join(
            f"{q(name)} = {now if name == 'completed_at' and self.clocked else mark(name)}"
            for name in FINALIZED
        )
        fence = f"{q('id')} = %s AND {q('lease_token')} = %s AND {q('status')} = %s"
        finalize = f"UPDATE {table} SET {assignments}, {q('locked_until')} = NULL WHERE {fence}"
        # The database computed expires_at: it comes back with the statement where the
        # database can say it (RETURNING), for the first response's Idempotency-Expires.
        self.finalize_returns = self.clocked and _returns_from_update(connection)
        self.finalize = finalize
        if self.finalize_returns:
            self.finalize = f"{finalize} RETURNING {q('expires_at')}"
        self.release = f"DELETE FROM {table} WHERE {fence}"
        self.unlock = f"UPDATE {table} SET {q('locked_until')} = {now} WHERE {fence}"
        self.session = _session_locks(self.vendor, leased)
        self.finalize_unlocking = None
        if self.vendor == "postgresql":
            # The session lock ends with the statement that completes the record: the
            # first request of an ``atomic=False`` view costs one statement more, not two.
            self.finalize_unlocking = f"{self.finalize}, pg_advisory_unlock(%s)"
        elif self.vendor == "mysql":
            # No RETURNING on UPDATE: a SET expression runs for the fenced row only.
            self.finalize_unlocking = finalize.replace(
                " WHERE ",
                f", {q('liveness')} = CASE WHEN RELEASE_LOCK(%s) IS NULL THEN '' ELSE '' END "
                "WHERE ",
                1,
            )

    def claim_params(
        self,
        values: dict[str, Any],
        offsets: dict[str, timedelta],
        connection: BaseDatabaseWrapper,
    ) -> list[Any]:
        """``values`` in claim order; with the database's clock, ``offsets`` (from now)
        stand for the clocked fields' values."""
        senders = self.senders
        params = []
        for name in self.claimed:
            if self.clocked and name in CLOCKED:
                if name in offsets:
                    params.append(clock.duration_param(offsets[name], connection))
            else:
                params.append(senders[name](values[name], connection))
        return params

    def finalize_params(
        self,
        values: dict[str, Any],
        ttl: timedelta,
        fence: dict[str, Any],
        connection: BaseDatabaseWrapper,
    ) -> list[Any]:
        """``values`` by ``FINALIZED`` for the SET clause, then ``fence`` for the WHERE.

        With the database's clock, ``completed_at`` is no parameter and ``expires_at``'s
        is ``ttl``.
        """
        senders = self.senders
        params = []
        for name in FINALIZED:
            if self.clocked and name == "expires_at":
                params.append(clock.duration_param(ttl, connection))
            elif not (self.clocked and name == "completed_at"):
                params.append(senders[name](values[name], connection))
        return params + self.where_params(fence, connection)

    def now_params(self) -> list[Any]:
        """What ``unlock``'s time needs: nothing, or the app's time where not clocked."""
        return [] if self.clocked else [clock.app_now()]

    def value(self, name: str, value: Any, connection: BaseDatabaseWrapper) -> Any:
        """A column's value as read, made what the ORM makes of it."""
        converters, column = self.converters[self.names.index(name)]
        for converter in converters:
            value = converter(value, column, connection)
        return value

    def now(self, row: Sequence[Any], connection: BaseDatabaseWrapper) -> Any:
        """The database's time read with a lookup's ``row`` (the app's, if not clocked)."""
        return clock.convert(row[-1], connection) if self.clocked else clock.app_now()

    def where_params(self, values: dict[str, Any], connection: BaseDatabaseWrapper) -> list[Any]:
        fields = self.fields
        return [
            fields[name].get_db_prep_value(value, connection, prepared=False)
            for name, value in values.items()
        ]

    def instance(self, row: Sequence[Any], connection: BaseDatabaseWrapper) -> Any:
        """A model instance from a row of all columns, as the ORM would build it."""
        values = list(row[: len(self.names)])
        for index, (converters, column) in enumerate(self.converters):
            value = values[index]
            for converter in converters:
                value = converter(value, column, connection)
            values[index] = value
        return self.model.from_db(self.alias, self.names, values)


class SessionLocks:
    """The statements of one vendor's session-level locks, named for an operation id.

    ``acquire`` takes the lock only while the record still carries the attempt's lease
    token, in one statement: an attempt whose lease was taken over in between gets no
    row and gives up. Both vendors' locks are reentrant within one session and dropped
    by the server when the session ends.
    """

    def __init__(self, acquire: str, release: str, name: Callable[[Any], Any]) -> None:
        self.acquire = acquire
        self.release = release
        self.name = name


def _session_locks(vendor: str, leased: str) -> SessionLocks | None:
    """``leased``: ``FROM <table> WHERE <id and lease token>``."""
    if vendor == "postgresql":
        return SessionLocks(
            f"SELECT pg_try_advisory_lock(%s) {leased}", "SELECT pg_advisory_unlock(%s)", _bigint
        )
    if vendor == "mysql":
        return SessionLocks(
            f"SELECT GET_LOCK(%s, 0) {leased}", "SELECT RELEASE_LOCK(%s)", _lock_name
        )
    return None


def _bigint(operation_id: Any) -> int:
    """PostgreSQL's advisory lock key: 64 bits of the operation id. Two ids sharing them
    only make a retry wait for the lease, never run twice."""
    return int.from_bytes(operation_id.bytes[:8], "big", signed=True)


def _lock_name(operation_id: Any) -> str:
    """A MySQL lock name (at most 64 characters), per server, not per database."""
    return f"django_idempotency:{operation_id.hex}"


def _returns_from_update(connection: BaseDatabaseWrapper) -> bool:
    """``UPDATE ... RETURNING``: PostgreSQL, SQLite 3.35+; not MySQL/MariaDB."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35, 0)
    return False


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


def purge_row(connection: BaseDatabaseWrapper) -> str | None:
    """What a purge batch's selection returns to name a row: PostgreSQL's ``ctid``, which
    finds the locked row without a descent of the primary key's index; elsewhere
    ``None``, the primary key. A locked row cannot move, so its ``ctid`` holds for the
    statement."""
    return "ctid" if connection.vendor == "postgresql" else None


def purge_batch(
    connection: BaseDatabaseWrapper, model: type[Model], selection: str, column: str
) -> str | None:
    """One purge batch as one statement the server runs on its own: delete the rows that
    ``selection`` picks, a ``SELECT`` of ``purge_row`` (named ``column`` in its result)
    compiled from the ORM, the purge rules' one home, with its own ``ORDER BY``,
    ``LIMIT`` and, where the database has it, ``FOR UPDATE SKIP LOCKED``. ``None``: no
    such statement here (Oracle, third-party backends), so the keys go through Python.

    The keys never leave the server. MySQL cannot ``DELETE ... WHERE id IN (SELECT ...
    LIMIT)`` on one table, so there the selection is a derived table joined first
    (``STRAIGHT_JOIN``): the delete then reads only the rows it locked, by primary key,
    and never waits for a row a request holds.
    """
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    pk = ops.quote_name(model._meta.pk.column)
    if connection.vendor == "postgresql":
        # ARRAY(...): the selection runs once, then a TID scan deletes what it locked.
        return f"DELETE FROM {table} WHERE ctid = ANY(ARRAY({selection}))"
    if connection.vendor == "sqlite":
        return f"DELETE FROM {table} WHERE {pk} IN ({selection})"
    if connection.vendor == "mysql":
        return (
            f"DELETE {table} FROM ({selection}) AS batch "
            f"STRAIGHT_JOIN {table} ON {table}.{pk} = batch.{ops.quote_name(column)}"
        )
    return None
