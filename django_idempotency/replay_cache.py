"""The replay cache, opt-in: completed responses kept in Django's cache framework, so a
replay is answered without a query (``IDEMPOTENCY["REPLAY_CACHE"]`` names the cache).

The cache only ever says "this intent is done, here is its answer". It is never asked
whether an intent is *not* done: a miss, a mismatching fingerprint or a cache that
fails all go to the database, which decides as it always does. An entry is written
only once its record has committed (``on_commit``: a record completed inside someone's
transaction may still roll back with it) and expires with the record. It holds what
the record holds, so with ``ENCRYPTION_KEYS`` the cache holds ciphertext. Its key is a
digest of the database, the scope and the key together, so an entry can never answer
another scope, nor the same scope on another tenant's shard.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

from django.core.cache import caches
from django.db import transaction

from django_idempotency import clock
from django_idempotency.conf import conf
from django_idempotency.models import IdempotencyRecord, Status
from django_idempotency.operation import Intent

_logger = logging.getLogger("django_idempotency")
_PREFIX = "django_idempotency:replay:"
_FIELDS = (
    "fingerprint",
    "response_status",
    "response_headers",
    "response_body",
    "method",
    "route",
    "attempts",
)


def lookup(intent: Intent) -> IdempotencyRecord | None:
    """The completed record of ``intent`` as the cache holds it, or ``None``: ask the
    database (nothing cached, another payload, an expired entry, a failing cache)."""
    cache = _cache()
    if cache is None:
        return None
    try:
        entry = cache.get(_key(intent.database or "", intent.scope, intent.key))
    except Exception as exc:  # a cache outage must never fail a request
        _logger.warning("Replay cache unavailable, asking the database: %s", exc)
        return None
    if not isinstance(entry, dict) or not intent.matches(entry.get("fingerprint", "")):
        return None
    expires_at = datetime.fromisoformat(entry["expires_at"])
    if expires_at <= clock.app_now():
        return None  # the cache's own expiry lags: the database decides
    record = IdempotencyRecord(
        id=entry["id"],
        scope=intent.scope,
        key=intent.key,
        status=Status.COMPLETED,
        expires_at=expires_at,
        **{name: entry[name] for name in _FIELDS},
    )
    record._state.adding = False
    return record


def remember(record: IdempotencyRecord) -> None:
    """Keep ``record``'s answer once it has committed (at once outside a transaction)."""
    if _cache() is None or record.status != Status.COMPLETED:
        return
    if "expires_at" not in record.__dict__:
        return  # computed by the database and not read back: cached on its first replay
    transaction.on_commit(lambda: _store(record), using=record._state.db)


def _store(record: IdempotencyRecord) -> None:
    cache = _cache()
    assert cache is not None
    seconds = int((record.expires_at - clock.app_now()).total_seconds())
    if seconds < 1:
        return
    body = record.response_body
    entry: dict[str, Any] = {
        "id": str(record.pk),
        "expires_at": record.expires_at.isoformat(),
        **{name: getattr(record, name) for name in _FIELDS},
        "response_body": None if body is None else bytes(body),
    }
    try:
        cache.set(_key(record._state.db or "", record.scope, record.key), entry, timeout=seconds)
    except Exception as exc:
        _logger.warning("Replay cache unavailable, not caching %s: %s", record.pk, exc)


def _cache() -> Any:
    alias = conf.REPLAY_CACHE
    return None if alias is None else caches[alias]


def _key(database: str, scope: str, key: str) -> str:
    text = f"{database}\x00{scope}\x00{key}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    return _PREFIX + digest.hexdigest()
