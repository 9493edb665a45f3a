"""What the management commands that work in batches share: reading ``--batch-size``
and ``--database``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_idempotency.models import records_databases

BAD_BATCH_SIZE = "Invalid --batch-size {value!r}: give a whole number of at least 1."
BAD_DATABASE = (
    "Invalid --database {value!r}: records are kept on {holding} "
    "(IDEMPOTENCY['DATABASES'], by default the router's write database)."
)


def batch_size(value: Any) -> int:
    """``--batch-size`` as a positive int; a ``CommandError`` saying so otherwise."""
    try:
        size = int(str(value).strip())
    except ValueError:
        size = 0
    if size < 1:
        raise CommandError(BAD_BATCH_SIZE.format(value=str(value)))
    return size


def add_database_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--database",
        action="append",
        default=None,
        metavar="ALIAS",
        help="Only this database of those that hold records (repeatable). Default: every "
        "one, in turn.",
    )


def databases(values: list[str] | None) -> tuple[str, ...]:
    """The ``--database`` aliases, each one that holds records; every one by default."""
    holding = records_databases()
    for value in values or ():
        if value not in holding:
            raise CommandError(
                BAD_DATABASE.format(value=value, holding=", ".join(map(repr, holding)))
            )
    return tuple(dict.fromkeys(values)) if values else holding
