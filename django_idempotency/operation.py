"""What goes into the engine and what comes out of it.

In: an ``Intent`` (who and what) and a ``Policy`` (how). Seen by the work while it runs:
an ``Operation`` (``request.idempotency``), or ``Unguarded`` where the guard let the
request through. Out: one outcome, ``Executed`` when the work ran, any of ``NotRun``
when it must not. Kept apart from the state machine so that the adapters and the
work's own code can name these without importing how they are decided.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from django_idempotency.database import STORE_ERRORS
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet

if TYPE_CHECKING:
    from django_idempotency.engine import Mode

__all__ = ["Operation", "Unguarded"]

R = TypeVar("R")


@dataclass(frozen=True)
class Intent:
    """Who and what. The adapters fit each value to its column (``keys.fit_*``)."""

    scope: str
    key: str
    fingerprint: str
    method: str = ""
    route: str = ""
    #: The same request's fingerprints under earlier secrets, which records made before
    #: a key rotation still carry: they are the same intent, not a reused key.
    earlier: tuple[str, ...] = ()
    #: The database the record lives on, beside the request's business writes
    #: (``models.records_database``); ``None``: the router's, asked with scope and key.
    database: str | None = None

    def matches(self, fingerprint: str) -> bool:
        return fingerprint == self.fingerprint or fingerprint in self.earlier


@dataclass(frozen=True)
class Policy:
    mode: Mode
    lease: timedelta
    ttl: timedelta
    wait: timedelta = timedelta(0)

    @property
    def lock_wait(self) -> timedelta:
        """How long a single-transaction claim waits on a duplicate's uncommitted one."""
        return self.wait or self.lease


@dataclass(frozen=True)
class Stored:
    """What to remember of a successful attempt; ``body=None`` if it was too large."""

    status: int
    headers: dict[str, str]
    body: bytes | None


class StoreFailed(Exception):
    """A checkpoint could not be written: the store failed, not the view."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class LeaseLost(Exception):
    """This attempt's lease was taken over by a retry: its work must not commit."""


class Operation:
    """What the work sees of its operation (``request.idempotency`` in views)."""

    guarded = True

    def __init__(self, record: IdempotencyRecord, records: IdempotencyRecordQuerySet) -> None:
        self._record = record
        self._records = records

    @property
    def id(self) -> Any:
        return self._record.pk

    @property
    def key(self) -> str:
        return self._record.key

    @property
    def scope(self) -> str:
        return self._record.scope

    @property
    def attempt(self) -> int:
        return self._record.attempts

    @property
    def recovery_point(self) -> str:
        return self._record.recovery_point

    def derived_key(self, name: str) -> str:
        """A key for a downstream call, the same on every attempt of this operation.

        Built from the operation id, never from the client's key, so it does not leak
        the key and is unique across scopes.
        """
        return f"{self._record.pk}:{name}"

    def checkpoint(self, name: str) -> None:
        """Record progress of multi-step work; a retry after a crash resumes from it."""
        try:
            written = self._records.checkpoint(self._record, name)
        except STORE_ERRORS as exc:
            raise StoreFailed(exc) from exc
        if not written:
            raise LeaseLost(f"operation {self._record.pk} was taken over")


class Unguarded:
    """``request.idempotency`` for a request the guard let through (no key, safe method).

    It has the operation's interface so a view written for ``atomic=False`` still runs,
    but nothing is remembered: there is no operation id (the status endpoint knows of
    nothing to show), and ``derived_key`` is unique to this one request.
    """

    guarded = False
    id = None
    key = None
    scope = ""
    attempt = 1
    recovery_point = ""

    def __init__(self) -> None:
        self._request_id = uuid.uuid4()

    def derived_key(self, name: str) -> str:
        return f"{self._request_id}:{name}"

    def checkpoint(self, name: str) -> None:
        self.recovery_point = name


@dataclass(frozen=True)
class Executed(Generic[R]):
    """The work ran. ``record`` is ``None`` when its result was not stored."""

    value: R
    record: IdempotencyRecord | None


@dataclass(frozen=True)
class Replay:
    record: IdempotencyRecord


@dataclass(frozen=True)
class InProgress:
    record: IdempotencyRecord
    retry_after: int


@dataclass(frozen=True)
class Mismatch:
    record: IdempotencyRecord


@dataclass(frozen=True)
class Expired:
    """The intent completed long ago: its answer is no longer kept, its key still is."""

    record: IdempotencyRecord


@dataclass(frozen=True)
class Conflict:
    """A lock conflict or a lost lease: nothing was committed, retry shortly.

    ``serialization``: the database refused the transaction for what other transactions
    did at the same time (a serialization failure or a deadlock), not for a lock it
    still waits for; running the attempt again can succeed at once.
    """

    reason: str
    retry_after: int = 1
    serialization: bool = False


@dataclass(frozen=True)
class StoreDown:
    """The store failed. ``retry_after``: when a retry can succeed; longer than the
    default only when the attempt's key stays claimed until its lease ends."""

    error: BaseException
    retry_after: int = 5


NotRun = Replay | InProgress | Mismatch | Expired | Conflict | StoreDown
Outcome = Executed[R] | NotRun
