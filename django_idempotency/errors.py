"""Which database errors mean "someone else holds the lock" on each backend.

Those are answered with 409 and ``Retry-After``: the transaction was rolled back and
the same request can simply be sent again. Any other error on the idempotency table
means the store is unusable and is answered with 503.
"""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError

#: What a failing store raises. ``InterfaceError`` is no ``DatabaseError`` (PEP 249),
#: yet psycopg2 raises it for any statement on a connection that was lost.
STORE_ERRORS = (DatabaseError, InterfaceError)

# PostgreSQL SQLSTATEs: deadlock_detected, lock_not_available, serialization_failure.
POSTGRES_LOCK_STATES = frozenset({"40P01", "55P03", "40001"})
# MySQL / MariaDB: deadlock, lock wait timeout, NOWAIT failed, record changed (MariaDB).
MYSQL_LOCK_CODES = frozenset({1213, 1205, 3572, 1020})
SQLITE_LOCK_MESSAGES = ("database is locked", "database table is locked")


def is_lock_conflict(exc: BaseException) -> bool:
    if not isinstance(exc, DatabaseError):
        return False
    cause = exc.__cause__ or exc
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if state is not None:
        return state in POSTGRES_LOCK_STATES
    args = getattr(cause, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in MYSQL_LOCK_CODES
    message = str(cause).lower()
    return any(text in message for text in SQLITE_LOCK_MESSAGES)
