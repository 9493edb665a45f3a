"""What the management commands that work in batches share: reading ``--batch-size``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

BAD_BATCH_SIZE = "Invalid --batch-size {value!r}: give a whole number of at least 1."


def batch_size(value: Any) -> int:
    """``--batch-size`` as a positive int; a ``CommandError`` saying so otherwise."""
    try:
        size = int(str(value).strip())
    except ValueError:
        size = 0
    if size < 1:
        raise CommandError(BAD_BATCH_SIZE.format(value=str(value)))
    return size
