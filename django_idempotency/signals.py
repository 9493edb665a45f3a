"""Signals sent by the engine, for metrics and audit logs, and the receivers that log them.

Every signal is sent with ``sender=IdempotencyRecord`` and these keyword arguments:

``record``
    The ``IdempotencyRecord`` concerned, as the engine holds it at that moment (not
    re-read from the database). ``None`` only for ``operation_conflict`` with
    ``reason="lock"`` when the lock conflict happened before any record was read.
``scope``
    The scope string the key belongs to (``"user:42"``, ``"anonymous"``...), as
    computed by the scope function for this request.
``key``
    The idempotency key, in full. Receivers that log it should hash it: a key is a
    bearer of intent, and this package's own log lines never contain it.

``operation_conflict`` also gets ``reason``, one of:

- ``"in_progress"``: another attempt holds a live lease on the key (answered 409);
  ``record`` is that attempt's record.
- ``"mismatch"``: the key was used before with another request (answered 422);
  ``record`` is the earlier request's record.
- ``"lock"``: a deadlock or lock timeout in the database (answered 409); nothing was
  committed.
- ``"lease_lost"``: this attempt's lease was taken over by a retry while it ran, so its
  writes were rolled back (answered 409).

When each is sent:

``operation_started``
    After a request claimed the key and before the view runs, including a retry that
    takes over a crashed attempt's record (then ``record.attempts`` > 1). In the
    default mode the claim has committed; with ``single_transaction=True`` it is
    still inside the transaction and may roll back with the view.
``operation_completed``
    After the view's response was stored; in the default and ``single_transaction``
    modes the view's writes and the record committed together before the signal.
    ``record.status`` is ``completed`` and ``record.response_status`` the stored status.
``operation_replayed``
    When a retry is answered from the stored response; the view does not run.
``operation_conflict``
    When a request is refused for one of the reasons above.

Receivers run inside the request, on its thread; keep them fast and never raise from
them: an exception propagates into the request.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.dispatch import Signal

__all__ = [
    "key_hash",
    "operation_completed",
    "operation_conflict",
    "operation_replayed",
    "operation_started",
]

operation_started = Signal()
"""An attempt claimed a key (also sent on lease take-over, with ``record.attempts`` > 1)."""
operation_completed = Signal()
"""An attempt stored its response; the business writes committed with it."""
operation_replayed = Signal()
"""A retry was answered from the stored response; the view did not run."""
operation_conflict = Signal()
"""A request was refused: in progress elsewhere, key reused, lock conflict, lease lost."""

_logger = logging.getLogger("django_idempotency")


def key_hash(key: str) -> str:
    """A short, stable stand-in for a key in logs: never log the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _context(record: Any, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "idempotency_operation": str(record.pk) if record is not None else None,
        "idempotency_key_hash": key_hash(key),
        **{f"idempotency_{name}": value for name, value in extra.items()},
    }


def _log_started(sender: Any, record: Any, scope: str, key: str, **kwargs: Any) -> None:
    if _logger.isEnabledFor(logging.DEBUG):
        _logger.debug(
            "Operation %s started, attempt %s (key hash %s).",
            record.pk,
            record.attempts,
            key_hash(key),
            extra=_context(record, key, attempt=record.attempts),
        )


def _log_completed(sender: Any, record: Any, scope: str, key: str, **kwargs: Any) -> None:
    if _logger.isEnabledFor(logging.INFO):
        _logger.info(
            "Operation %s completed with status %s (key hash %s).",
            record.pk,
            record.response_status,
            key_hash(key),
            extra=_context(record, key, response_status=record.response_status),
        )


def _log_replayed(sender: Any, record: Any, scope: str, key: str, **kwargs: Any) -> None:
    if _logger.isEnabledFor(logging.INFO):
        _logger.info(
            "Operation %s replayed its stored %s response (key hash %s).",
            record.pk,
            record.response_status,
            key_hash(key),
            extra=_context(record, key, response_status=record.response_status),
        )


def _log_conflict(
    sender: Any, record: Any, scope: str, key: str, reason: str = "", **kwargs: Any
) -> None:
    if _logger.isEnabledFor(logging.INFO):
        _logger.info(
            "Operation %s refused: %s (key hash %s).",
            record.pk if record is not None else "-",
            reason,
            key_hash(key),
            extra=_context(record, key, reason=reason),
        )


def connect_logging() -> None:
    """Log every signal under the ``django_idempotency`` logger (DEBUG and INFO).

    Lines carry the operation id and a short hash of the key, never the key, the
    scope or any body. The store being unavailable is logged at ERROR by the engine.
    """
    operation_started.connect(_log_started, dispatch_uid="django_idempotency.log_started")
    operation_completed.connect(_log_completed, dispatch_uid="django_idempotency.log_completed")
    operation_replayed.connect(_log_replayed, dispatch_uid="django_idempotency.log_replayed")
    operation_conflict.connect(_log_conflict, dispatch_uid="django_idempotency.log_conflict")
