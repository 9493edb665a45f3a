"""The suite through a PgBouncer: ``POOLER=transaction`` (or ``session``) with a
``DATABASE_URL`` on the pooler's port (``scripts/pgbouncer``, .ci/run's postgres-pgbouncer).

The test database is made, migrated, flushed and dropped through the pooler like
everything else: ``CREATE DATABASE`` runs in autocommit, which transaction pooling carries.
Only ``DROP DATABASE`` needs help. PgBouncer keeps idle server sessions on a database after
its clients have gone, and PostgreSQL refuses to drop a database that has sessions, so
:func:`end_server_sessions` ends them from the ``postgres`` database first: after the
tests, and before them for a test database that a killed run left behind.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.db import connections

#: ``"transaction"`` or ``"session"``: the pooling mode of the PgBouncer the suite runs
#: through, if any.
POOLER = os.environ.get("POOLER", "")
TRANSACTION_POOLING = POOLER == "transaction"


def names_of_test_databases() -> list[tuple[str, str]]:
    """(alias, test database name) of each PostgreSQL alias, read before setup renames them."""
    return [
        (alias, connections[alias].creation._get_test_db_name())
        for alias in connections
        if connections[alias].vendor == "postgresql"
    ]


def end_server_sessions(names: list[tuple[str, str]]) -> None:
    """End every server session on the named databases (the pooler's idle ones included)."""
    connections.close_all()
    for alias, name in names:
        with connections[alias]._nodb_cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


def cut_other_clients(connection: Any) -> int:
    """What a SIGKILLed worker does behind a pooler: the kernel closes its sockets to the
    pooler, and nothing reaches PostgreSQL but what the pooler makes of that. Shuts down
    every socket of this process to the pooler except ``connection``'s; returns how many."""
    connection.ensure_connection()
    own = connection.connection.fileno()
    pooler = (connection.settings_dict["HOST"], int(connection.settings_dict["PORT"]))
    cut = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd == own:
            continue
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:  # closed meanwhile
            continue
        with sock:
            try:
                if sock.getpeername()[:2] != pooler:
                    continue
                sock.shutdown(socket.SHUT_RDWR)  # the socket, not only this descriptor
            except OSError:
                continue
        cut += 1
    return cut
