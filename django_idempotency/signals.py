"""Signals sent by the engine, for metrics and audit logs.

Every signal is sent with ``sender=IdempotencyRecord`` and these keyword arguments:

- ``record``: the ``IdempotencyRecord`` concerned (for ``operation_conflict`` it may be
  ``None`` when the conflict was a lock timeout or deadlock rather than a live lease);
- ``scope`` and ``key``: the intent's identity.

``operation_conflict`` also gets ``reason``: ``"in_progress"``, ``"mismatch"``,
``"lock"`` or ``"lease_lost"``. Receivers run inside the request; keep them fast and
never raise from them.
"""

from __future__ import annotations

from django.dispatch import Signal

#: An attempt claimed a key (also sent, with ``attempt`` > 1, on lease take-over).
operation_started = Signal()
#: An attempt stored its response; the business writes committed with it.
operation_completed = Signal()
#: A retry was answered from the stored response; the view did not run.
operation_replayed = Signal()
#: A request was refused: in progress elsewhere, key reused, lock conflict, lease lost.
operation_conflict = Signal()
