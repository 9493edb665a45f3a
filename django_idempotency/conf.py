"""One settings object over the ``IDEMPOTENCY`` dict, read at access time.

Nothing is cached, so ``override_settings(IDEMPOTENCY={...})`` takes effect at once.
Values are validated by the system checks in ``checks.py``, not here: a bad value is
reported at start-up with a hint instead of failing a request.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

__all__ = ["DEFAULTS", "Settings", "conf"]

DEFAULTS: dict[str, Any] = {
    "HEADER": "Idempotency-Key",
    "REQUIRED": False,
    "TTL": timedelta(hours=24),
    "LEASE": timedelta(seconds=90),
    "WAIT": timedelta(seconds=0),
    "SCOPE": "django_idempotency.scopes.by_user",
    "MAX_RESPONSE_BYTES": 1_048_576,
    "METHODS": ("POST", "PUT", "PATCH", "DELETE"),
    "FORM_FIELD": "idempotency_key",
    "PURGE_GRACE": timedelta(days=1),
    "SESSION_LOCKS": "auto",
    "CONFLICT_RETRIES": 5,
    "REPLAY_CACHE": None,
    "DATABASES": (),
    "TOMBSTONE_TTL": timedelta(days=30),
    "PROBLEM_BASE_URL": "https://django-idempotency.readthedocs.io/en/latest/reference/problems/#",
    "ENCRYPTION_KEYS": (),
    "REDACT": None,
}
"""Every setting's default: what ``conf`` answers for a name ``IDEMPOTENCY`` leaves out."""


class Settings:
    """Typed access to ``settings.IDEMPOTENCY`` with the defaults above filled in."""

    def get(self, name: str) -> Any:
        user = getattr(django_settings, "IDEMPOTENCY", None) or {}
        if name in user:
            return user[name]
        return DEFAULTS[name]

    @property
    def HEADER(self) -> str:
        return str(self.get("HEADER"))

    @property
    def header_meta_key(self) -> str:
        """The ``request.META`` name of the header, e.g. ``HTTP_IDEMPOTENCY_KEY``."""
        return "HTTP_" + self.HEADER.upper().replace("-", "_")

    @property
    def REQUIRED(self) -> bool:
        return bool(self.get("REQUIRED"))

    @property
    def TTL(self) -> timedelta:
        return self.get("TTL")  # type: ignore[no-any-return]

    @property
    def LEASE(self) -> timedelta:
        return self.get("LEASE")  # type: ignore[no-any-return]

    @property
    def WAIT(self) -> timedelta:
        return self.get("WAIT")  # type: ignore[no-any-return]

    @property
    def SCOPE(self) -> Callable[[Any], str]:
        value = self.get("SCOPE")
        if isinstance(value, str):
            value = import_string(value)
        return value  # type: ignore[no-any-return]

    @property
    def MAX_RESPONSE_BYTES(self) -> int:
        return int(self.get("MAX_RESPONSE_BYTES"))

    @property
    def METHODS(self) -> frozenset[str]:
        return frozenset(method.upper() for method in self.get("METHODS"))

    @property
    def FORM_FIELD(self) -> str:
        """The hidden form field read when a browser form sends no header."""
        return str(self.get("FORM_FIELD"))

    @property
    def PURGE_GRACE(self) -> timedelta:
        """How long past its lease an IN_PROGRESS record is kept before purge deletes it.

        A record whose lease ran out is not dead yet: a retry may still take it over and
        resume under the same operation id (``atomic=False`` work keeps its recovery
        point and derived keys that way). After ``locked_until + PURGE_GRACE`` nobody is
        expected to come back, and ``purge_idempotency_records`` deletes it even if its
        ``expires_at`` is still ahead. Default: one day.
        """
        return self.get("PURGE_GRACE")  # type: ignore[no-any-return]

    @property
    def SESSION_LOCKS(self) -> bool | str:
        """Whether ``atomic=False`` work holds a session-level lock while it runs, so a
        retry can take over a crashed attempt at once instead of after its lease:
        ``"auto"`` (on PostgreSQL and MySQL/MariaDB unless the alias sets
        ``DISABLE_SERVER_SIDE_CURSORS``, as behind a transaction-pooling PgBouncer),
        ``True`` or ``False``. See ``database.session_locks``.
        """
        value = self.get("SESSION_LOCKS")
        return value if value == "auto" else bool(value)

    @property
    def TOMBSTONE_TTL(self) -> timedelta:
        """How long a completed record's key stays taken after its ``TTL``, answering late
        retries with ``410 idempotency-key-expired`` instead of running them again.
        ``timedelta(0)``: the key is free at once, as on Stripe."""
        return self.get("TOMBSTONE_TTL")  # type: ignore[no-any-return]

    @property
    def REPLAY_CACHE(self) -> str | None:
        """The alias in ``CACHES`` that replays are answered from before the database
        (``replay_cache``), or ``None``: every replay reads its record."""
        value = self.get("REPLAY_CACHE")
        return None if value is None else str(value)

    @property
    def DATABASES(self) -> tuple[str, ...]:
        """The aliases of every database that holds records (sharded projects), or empty:
        the router's write database for ``IdempotencyRecord`` alone. Purge and the admin
        work across them; a request's record must land on one of them."""
        return tuple(self.get("DATABASES") or ())

    @property
    def CONFLICT_RETRIES(self) -> int:
        """How many times an atomic attempt the database refused for a serialization
        failure or a deadlock runs again inside the request before the client gets 409."""
        return int(self.get("CONFLICT_RETRIES"))

    @property
    def PROBLEM_BASE_URL(self) -> str:
        return str(self.get("PROBLEM_BASE_URL"))

    @property
    def ENCRYPTION_KEYS(self) -> tuple[str | bytes, ...]:
        """Fernet keys, newest first: stored responses are encrypted under the first, and
        every one decrypts. Empty (the default): responses are stored in the clear."""
        return tuple(self.get("ENCRYPTION_KEYS") or ())

    @property
    def REDACT(self) -> Callable[[Any, Any], Any] | None:
        """``redact(response, stored) -> stored``, applied before a response is stored."""
        value = self.get("REDACT")
        if isinstance(value, str):
            value = import_string(value)
        return value  # type: ignore[no-any-return]


conf = Settings()
"""The settings: ``conf.TTL``, ``conf.SCOPE``... read ``settings.IDEMPOTENCY`` on each access."""
