"""What the records' database tells the engine: its errors and its transaction's state.

Lock conflicts are answered with 409 and ``Retry-After``: the transaction was rolled
back and the same request can simply be sent again. Any other error on the idempotency
table means the store is unusable and is answered with 503. A transaction the work
itself doomed, or one the guard finds already open, is neither: see below.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, InterfaceError

#: What a failing store raises. ``InterfaceError`` is no ``DatabaseError`` (PEP 249),
#: yet psycopg2 raises it for any statement on a connection that was lost.
STORE_ERRORS = (DatabaseError, InterfaceError)

# PostgreSQL SQLSTATEs: deadlock_detected, lock_not_available, serialization_failure.
POSTGRES_LOCK_STATES = frozenset({"40P01", "55P03", "40001"})
POSTGRES_SERIALIZATION_STATES = frozenset({"40P01", "40001"})
# MySQL / MariaDB: deadlock, lock wait timeout, NOWAIT failed, record changed (MariaDB).
MYSQL_LOCK_CODES = frozenset({1213, 1205, 3572, 1020})
MYSQL_SERIALIZATION_CODES = frozenset({1213, 1020})
SQLITE_LOCK_MESSAGES = ("database is locked", "database table is locked")


def is_lock_conflict(exc: BaseException) -> bool:
    return _classify(exc, POSTGRES_LOCK_STATES, MYSQL_LOCK_CODES, SQLITE_LOCK_MESSAGES)


def is_serialization_failure(exc: BaseException) -> bool:
    """A lock conflict that ended the transaction for what others did meanwhile (a
    serialization failure, a deadlock), rather than a wait that ran out: the same
    transaction run again may well commit."""
    return _classify(exc, POSTGRES_SERIALIZATION_STATES, MYSQL_SERIALIZATION_CODES, ())


def _classify(
    exc: BaseException, states: frozenset[str], codes: frozenset[int], messages: tuple[str, ...]
) -> bool:
    if not isinstance(exc, DatabaseError):
        return False
    cause = exc.__cause__ or exc
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if state is not None:
        return state in states
    args = getattr(cause, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in codes
    message = str(cause).lower()
    return any(text in message for text in messages)


# libpq's PQTRANS_INERROR: psycopg 3's TransactionStatus.INERROR, psycopg2's
# TRANSACTION_STATUS_INERROR.
POSTGRES_IN_ERROR = 3


def marked_for_rollback(connection: Any) -> bool:
    """Whether the open transaction can no longer commit, whatever the work answered.

    Django marks it when the work caught a database error inside the atomic block (an
    ``IntegrityError`` it turned into a 409) or called ``set_rollback(True)``;
    PostgreSQL aborts it when the work caught the error of a raw cursor. Read from the
    connection's own state: no round trip.
    """
    if connection.needs_rollback:
        return True
    raw = getattr(connection, "connection", None)
    if connection.vendor != "postgresql" or raw is None:
        return False
    info = getattr(raw, "info", None)
    status = info.transaction_status if info is not None else raw.get_transaction_status()
    return int(status) == POSTGRES_IN_ERROR


def inside_transaction(connection: Any) -> bool:
    """Whether the connection is inside a transaction that a claim must not commit past.

    That is ``ATOMIC_REQUESTS`` where the view's opt-out could not reach the URL's
    callback (``method_decorator`` on a handler, ``@api_view`` above ``@idempotent``),
    or the project's own ``atomic`` block. A test case's transaction does not count:
    Django lets durable blocks run inside it, as they would in production.
    """
    return bool(connection.in_atomic_block) and not all(
        getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
    )


def session_locks(connection: Any) -> bool:
    """Whether ``atomic=False`` attempts on ``connection`` may show their liveness by a
    session-level lock (``IDEMPOTENCY["SESSION_LOCKS"]``).

    ``"auto"``: on PostgreSQL and MySQL/MariaDB, unless the alias sets
    ``DISABLE_SERVER_SIDE_CURSORS``, which Django's documentation asks of every project
    behind a transaction-pooling PgBouncer. There a session lock is unsafe both ways:
    the pooler may give the holder's server session to a retry, for which the lock is
    free (sessions locks are reentrant), and the holder's own ``unlock`` may run on
    another one. Off, the attempt has its lease only.
    """
    from django_idempotency.conf import conf

    setting = conf.SESSION_LOCKS
    if connection.vendor not in ("postgresql", "mysql") or setting is False:
        return False
    if setting is True:
        return True
    return not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS", False)


@contextmanager
def fresh_connection(connection: Any) -> Iterator[Any]:
    """A new connection to ``connection``'s database, closed afterwards: for the release
    of a key whose request's connection has just failed. ``None`` for an in-memory
    SQLite database, which another connection would not see."""
    from django.db import connections

    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        yield None
        return
    other = connections.create_connection(connection.alias)
    try:
        yield other
    finally:
        other.close()
