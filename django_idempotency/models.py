"""The record that remembers, durably and with the side effect, that an intent was done.

The QuerySet methods below are the only code that writes records. Every write that
acts on a claimed record is fenced by ``lease_token``: an attempt whose lease was taken
over matches zero rows and must roll back.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.db import DatabaseError, IntegrityError, connections, models, router, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_idempotency.database import is_lock_conflict
from django_idempotency.sql import Statements, lock_timeout, statements

BATCH_TRIES = 5


class Status(models.TextChoices):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


def records_database() -> str:
    """Records always live on the write database: a replica's stale read is a duplicate."""
    return router.db_for_write(IdempotencyRecord) or "default"


def expired_at(now: datetime) -> Q:
    """The one rule for "expired": past ``expires_at`` and holding no live lease.

    An IN_PROGRESS record whose lease still runs is never expired, even past its
    ``expires_at`` (a view whose ``ttl`` is shorter than its lease): its attempt may
    still commit, so treating the key as free would run the work a second time.
    """
    return Q(expires_at__lte=now) & ~live_lease(now)


def live_lease(now: datetime) -> Q:
    return Q(status=Status.IN_PROGRESS, locked_until__gt=now)


class IdempotencyRecordQuerySet(models.QuerySet["IdempotencyRecord"]):
    def _sql(self) -> tuple[Statements, Any]:
        """The hot statements and the connection they run on, looked up once."""
        connection = connections[self.db]
        return statements(self.model, connection), connection

    def lookup(self, scope: str, key: str) -> IdempotencyRecord | None:
        sql, connection = self._sql()
        with connection.cursor() as cursor:
            return self._read(sql, connection, cursor, scope, key)

    def _read(
        self, sql: Statements, connection: Any, cursor: Any, scope: str, key: str
    ) -> IdempotencyRecord | None:
        cursor.execute(sql.lookup, [scope, key])
        row = cursor.fetchone()
        return None if row is None else sql.instance(row, connection)

    def claim(
        self,
        *,
        scope: str,
        key: str,
        fingerprint: str,
        method: str,
        route: str,
        lease: timedelta,
        ttl: timedelta,
        wait: timedelta | None = None,
    ) -> tuple[IdempotencyRecord | None, bool]:
        """Insert a new IN_PROGRESS record, or read the record that holds (scope, key).

        Returns ``(record, True)`` for the new record, ``(existing, False)`` when the key
        is taken, and ``(None, False)`` when the holder was deleted in between: claim
        again. The insert ignores conflicts instead of raising, so it needs no savepoint
        inside a transaction and leaves no error in the database log. A concurrent
        uncommitted insert of the same key makes it wait (PostgreSQL, InnoDB) until that
        transaction ends; ``wait`` bounds that wait with a lock timeout set by the insert
        itself: on PostgreSQL it stays in force for the rest of the transaction, on
        MariaDB it covers the insert only; SQLite waits its connection's ``timeout``.

        The insert comes first because a first request is the common case: it costs
        one statement, and a retry two. (One statement for both, a CTE on PostgreSQL,
        measured slower than the two: the server plans it afresh every time.)
        """
        now = timezone.now()
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "scope": scope,
            "key": key,
            "fingerprint": fingerprint,
            "status": str(Status.IN_PROGRESS),
            "method": method[:10],
            "route": route.replace("\x00", "\ufffd")[:255],
            "response_status": None,
            "response_headers": {},
            "response_body": None,
            "lease_token": uuid.uuid4(),
            "locked_until": now + lease,
            "attempts": 1,
            "recovery_point": "",
            "created_at": now,
            "completed_at": None,
            "expires_at": now + ttl,
        }
        sql, connection = self._sql()
        if not sql.supports_ignore:
            return self._claim_or_fail(sql, values)
        statement = sql.insert
        params = sql.claim_params(values, connection)
        if wait is not None and sql.bounded_insert is not None:
            statement = sql.bounded_insert
            params.append(lock_timeout(wait))
        elif wait is not None and sql.is_mariadb:
            seconds = max(math.ceil(wait.total_seconds()), 1)
            statement = f"SET STATEMENT innodb_lock_wait_timeout={seconds} FOR {statement}"
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            if cursor.rowcount != 1:
                return self._read(sql, connection, cursor, scope, key), False
        return self.model.from_db(self.db, sql.names, [values[name] for name in sql.names]), True

    def _claim_or_fail(
        self, sql: Statements, values: dict[str, Any]
    ) -> tuple[IdempotencyRecord | None, bool]:
        """For backends that cannot ignore a conflict (Oracle): insert, or catch the error."""
        record = self.model(**values)
        try:
            with transaction.atomic(using=self.db):
                self.model.objects.using(self.db).bulk_create([record])
        except IntegrityError:
            return self.lookup(values["scope"], values["key"]), False
        record._state.adding = False
        record._state.db = self.db
        return record, True

    def discard_expired(self, record: IdempotencyRecord) -> bool:
        """Delete ``record`` if it has expired, so that the key can be claimed afresh."""
        deleted, _count = self.filter(expired_at(timezone.now()), pk=record.pk).delete()
        return bool(deleted)

    def take_over(self, record: IdempotencyRecord, lease: timedelta) -> IdempotencyRecord | None:
        """Give a crashed attempt's expired lease to a new attempt, once.

        Two retries racing for the same dead lease both run this UPDATE; the
        ``lease_token`` condition lets exactly one of them match.
        """
        now = timezone.now()
        token = uuid.uuid4()
        updated = self.filter(
            pk=record.pk,
            lease_token=record.lease_token,
            status=Status.IN_PROGRESS,
            locked_until__lte=now,
        ).update(lease_token=token, locked_until=now + lease, attempts=F("attempts") + 1)
        if not updated:
            return None
        record.lease_token = token
        record.locked_until = now + lease
        record.attempts += 1
        return record

    def lock(self, record: IdempotencyRecord, *, nowait: bool = False) -> bool:
        """Row-lock ``record`` for the rest of the transaction if its lease is still ours."""
        sql, connection = self._sql()
        params = sql.where_params({"id": record.pk, "lease_token": record.lease_token}, connection)
        with connection.cursor() as cursor:
            cursor.execute(sql.lock_nowait if nowait else sql.lock, params)
            return cursor.fetchone() is not None

    def finalize(
        self,
        record: IdempotencyRecord,
        *,
        status: int,
        headers: dict[str, str],
        body: bytes | None,
        ttl: timedelta,
    ) -> bool:
        """Mark the attempt COMPLETED with its response; ``False`` if the lease was lost."""
        now = timezone.now()
        values: dict[str, Any] = {
            "status": str(Status.COMPLETED),
            "response_status": status,
            "response_headers": headers,
            "response_body": body,
            "completed_at": now,
            "expires_at": now + ttl,
        }
        sql, connection = self._sql()
        fence = {
            "id": record.pk,
            "lease_token": record.lease_token,
            "status": str(Status.IN_PROGRESS),
        }
        params = sql.finalize_params(values, fence, connection)
        with connection.cursor() as cursor:
            cursor.execute(sql.finalize, params)
            updated = cursor.rowcount
        if updated != 1:
            return False
        for name, value in values.items():
            setattr(record, name, value)
        record.locked_until = None
        return True

    def release(self, record: IdempotencyRecord) -> bool:
        """Forget an attempt whose writes were rolled back, so a retry runs again."""
        deleted, _count = self.filter(
            pk=record.pk,
            lease_token=record.lease_token,
            status=Status.IN_PROGRESS,
        ).delete()
        return bool(deleted)

    def unlock(self, record: IdempotencyRecord) -> bool:
        """End the lease at once but keep the record, its id and its recovery point.

        Used when work outside the database may already have happened: the retry takes
        over the same operation id, so derived downstream keys stay the same.
        """
        now = timezone.now()
        updated = self.filter(
            pk=record.pk,
            lease_token=record.lease_token,
            status=Status.IN_PROGRESS,
        ).update(locked_until=now)
        if updated:
            record.locked_until = now
        return bool(updated)

    def checkpoint(self, record: IdempotencyRecord, recovery_point: str) -> bool:
        updated = self.filter(
            pk=record.pk,
            lease_token=record.lease_token,
            status=Status.IN_PROGRESS,
        ).update(recovery_point=recovery_point)
        if updated:
            record.recovery_point = recovery_point
        return bool(updated)

    def expired(self, now: datetime | None = None) -> IdempotencyRecordQuerySet:
        expired: IdempotencyRecordQuerySet = self.filter(expired_at(now or timezone.now()))
        return expired

    def stuck(self, now: datetime | None = None) -> IdempotencyRecordQuerySet:
        """IN_PROGRESS records whose lease has run out: their attempt crashed or hangs."""
        return self.filter(  # type: ignore[no-any-return]
            status=Status.IN_PROGRESS,
            locked_until__lte=now or timezone.now(),
        )

    # Operating: purge and release, for the purge command and the admin actions.

    def purgeable_expired(
        self, now: datetime, older_than: timedelta = timedelta(0)
    ) -> IdempotencyRecordQuerySet:
        """Records that expired at least ``older_than`` ago and hold no live lease now."""
        return self.filter(  # type: ignore[no-any-return]
            Q(expires_at__lte=now - older_than) & ~live_lease(now)
        )

    def purgeable_abandoned(
        self,
        now: datetime,
        older_than: timedelta = timedelta(0),
        grace: timedelta | None = None,
    ) -> IdempotencyRecordQuerySet:
        """Unexpired IN_PROGRESS records whose lease ended ``max(grace, older_than)`` ago.

        ``grace`` defaults to ``IDEMPOTENCY["PURGE_GRACE"]``. Records that also expired
        belong to ``purgeable_expired``, so the two sets never overlap.
        """
        from django_idempotency.conf import conf

        grace = conf.PURGE_GRACE if grace is None else grace
        return self.filter(  # type: ignore[no-any-return]
            status=Status.IN_PROGRESS,
            locked_until__lte=now - max(grace, older_than),
            expires_at__gt=now - older_than,
        )

    def purge(
        self,
        *,
        now: datetime | None = None,
        older_than: timedelta = timedelta(0),
        grace: timedelta | None = None,
        batch_size: int = 1000,
        dry_run: bool = False,
        on_batch: Callable[[PurgeBatch], None] | None = None,
    ) -> PurgeResult:
        """Delete expired records and abandoned IN_PROGRESS ones, in short batches.

        Works on ``self``, so ``IdempotencyRecord.objects.purge()`` cleans the table and
        a filtered queryset (the admin's selection) cleans only its rows. Each batch is
        its own transaction: select up to ``batch_size`` primary keys (``FOR UPDATE
        SKIP LOCKED`` where the database has it, so rows a request or another purge
        holds are left alone), then delete those keys with the condition checked again.
        Rows are never loaded into Python, only their keys. ``now`` is fixed when the
        purge starts, so a purge always ends. ``dry_run`` only counts.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        now = now or timezone.now()
        records = self._on_write_database()
        kinds = (
            ("expired", records.purgeable_expired(now, older_than), ("expires_at",)),
            (
                "abandoned",
                records.purgeable_abandoned(now, older_than, grace),
                ("status", "locked_until"),
            ),
        )
        result = PurgeResult(dry_run=dry_run)
        for kind, candidates, order in kinds:
            if dry_run:
                result.add(kind, candidates.count())
                continue
            while True:
                started = time.monotonic()
                selected, deleted = candidates._delete_batch(order, batch_size)
                if not selected:
                    break
                batch = PurgeBatch(
                    number=result.batches + 1,
                    kind=kind,
                    selected=selected,
                    deleted=deleted,
                    seconds=time.monotonic() - started,
                )
                result.record(batch)
                if on_batch is not None:
                    on_batch(batch)
                if selected < batch_size:
                    break
        return result

    def release_stuck(self, now: datetime | None = None, batch_size: int = 1000) -> tuple[int, int]:
        """Delete stuck operations so their key can be used afresh; ``(released, kept)``.

        Stuck means IN_PROGRESS with its lease run out; the condition is checked again
        in the DELETE, so an operation a retry has just taken over is left alone. The
        next request with the key runs the operation again under a new operation id.
        Records with a ``recovery_point`` are kept: their ``atomic=False`` work
        reached a checkpoint, so it may already have acted outside the database, and a
        retry that takes the record over resumes it with the same derived keys.
        """
        now = now or timezone.now()
        stuck = self._on_write_database().stuck(now)
        kept = stuck.exclude(recovery_point="").count()
        released = 0
        candidates = stuck.filter(recovery_point="")
        while True:
            selected, deleted = candidates._delete_batch(("status", "locked_until"), batch_size)
            released += deleted
            if selected < batch_size:
                return released, kept

    def _on_write_database(self) -> IdempotencyRecordQuerySet:
        """Deletes must select on the database they delete from, never a replica."""
        alias: str | None = getattr(self, "_db", None)  # set by .using()
        records: IdempotencyRecordQuerySet = self.using(alias or records_database())
        return records

    def _delete_batch(self, order: tuple[str, ...], batch_size: int) -> tuple[int, int]:
        """One short transaction: pick up to ``batch_size`` keys, delete them if still matching.

        Returns ``(selected, deleted)``. The keys go to Python and back (MySQL cannot
        ``DELETE ... WHERE id IN (SELECT ... LIMIT)`` on one table), in chunks that
        respect the database's parameter limit.
        """
        connection = connections[self.db]
        selection = self.order_by(*order)
        if connection.features.has_select_for_update_skip_locked:
            selection = selection.select_for_update(skip_locked=True)
        limit = connection.features.max_query_params
        chunk = max(limit - 50, 1) if limit else batch_size
        label = self.model._meta.label
        for attempt in range(BATCH_TRIES):
            try:
                with transaction.atomic(using=self.db):
                    ids = list(selection.values_list("pk", flat=True)[:batch_size])
                    deleted = 0
                    for start in range(0, len(ids), chunk):
                        rows = self.filter(pk__in=ids[start : start + chunk]).only("pk")
                        deleted += rows.delete()[1].get(label, 0)
                return len(ids), deleted
            except DatabaseError as exc:
                # Two purges (or a purge and live traffic) can deadlock on InnoDB's index
                # locks even with SKIP LOCKED; the batch rolled back whole, so run it again.
                if not is_lock_conflict(exc) or attempt == BATCH_TRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")


class IdempotencyRecord(models.Model):
    Status = Status

    id = models.UUIDField(_("operation id"), primary_key=True, default=uuid.uuid4, editable=False)
    scope = models.CharField(_("scope"), max_length=255)
    key = models.CharField(_("key"), max_length=255)
    fingerprint = models.CharField(_("fingerprint"), max_length=64)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices)
    method = models.CharField(_("method"), max_length=10, blank=True)
    route = models.CharField(_("route"), max_length=255, blank=True)
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    response_headers = models.JSONField(_("response headers"), default=dict, blank=True)
    response_body = models.BinaryField(_("response body"), null=True, blank=True)
    lease_token = models.UUIDField(_("lease token"), null=True, blank=True)
    locked_until = models.DateTimeField(_("locked until"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=1)
    recovery_point = models.CharField(_("recovery point"), max_length=100, blank=True, default="")
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires at"))

    objects: ClassVar[IdempotencyRecordQuerySet] = IdempotencyRecordQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        db_table = "django_idempotency_record"
        verbose_name = _("idempotency record")
        verbose_name_plural = _("idempotency records")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="django_idempotency_scope_key"),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="django_idem_expires_at"),
            models.Index(fields=["status", "locked_until"], name="django_idem_status_locked"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.scope})"

    def is_expired(self, now: datetime | None = None) -> bool:
        """``expired_at`` in Python: past ``expires_at`` and no live lease."""
        now = now or timezone.now()
        live = self.status == Status.IN_PROGRESS and self.lease_is_live(now)
        return self.expires_at <= now and not live

    def lease_is_live(self, now: datetime | None = None) -> bool:
        return self.locked_until is not None and self.locked_until > (now or timezone.now())


@dataclass(frozen=True)
class PurgeBatch:
    """One batch of ``IdempotencyRecordQuerySet.purge``, as passed to ``on_batch``."""

    number: int
    kind: str  # "expired" or "abandoned"
    selected: int
    deleted: int
    seconds: float  # the batch's whole transaction, selection and delete


@dataclass
class PurgeResult:
    """What ``purge`` did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    expired: int = 0
    abandoned: int = 0
    batches: int = 0
    longest_batch: float = 0.0

    @property
    def total(self) -> int:
        return self.expired + self.abandoned

    def add(self, kind: str, count: int) -> None:
        setattr(self, kind, getattr(self, kind) + count)

    def record(self, batch: PurgeBatch) -> None:
        self.add(batch.kind, batch.deleted)
        self.batches += 1
        self.longest_batch = max(self.longest_batch, batch.seconds)
