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
from typing import Any, ClassVar, NamedTuple

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, connections, models, router, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_idempotency import clock
from django_idempotency.database import is_lock_conflict
from django_idempotency.sql import CLOCKED, Statements, lock_timeout, statements

__all__ = ["IdempotencyRecord", "IdempotencyRecordQuerySet", "PurgeBatch", "PurgeResult"]

_BATCH_TRIES = 5


class Status(models.TextChoices):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class Liveness(models.TextChoices):
    """How the running attempt shows it is alive, so that a retry can tell a crash from a
    slow view without waiting for the lease.

    ``ROW``: the attempt holds the record's row lock while it works (the atomic modes),
    which the database drops the instant the attempt's connection dies. ``SESSION``: its
    connection holds a session-level lock named for the operation (``atomic=False``).
    ``LEASE``: nothing but the lease (SQLite; ``atomic=False`` where session locks are
    off), so a retry waits for ``locked_until``.
    """

    LEASE = ""
    ROW = "row"
    SESSION = "session"


def records_database(using: str | None = None, **hints: Any) -> str:
    """The database of one intent's record: where the business writes of its request
    commit, so that the two commit or roll back together.

    ``using`` when the view names it; otherwise the router's write database for
    ``IdempotencyRecord`` given ``hints`` (the guard passes ``request``, ``scope`` and
    ``key``; docs/running-at-scale.md). Always a write database: a replica's stale read
    is a duplicate. It must be one of ``records_databases()``, or purge and the
    operator's views would never see the record.
    """
    alias = using or router.db_for_write(IdempotencyRecord, **hints) or "default"
    if not (using or hints) and not _listed():
        return alias  # the one database of an unsharded project
    holding = records_databases()
    if alias not in holding:
        raise ImproperlyConfigured(
            f"Idempotency records would be written to database {alias!r}, which is not "
            f"among the databases that hold them ({', '.join(map(repr, holding))}): purge "
            "would never delete them. List every database that holds records in "
            "IDEMPOTENCY['DATABASES']."
        )
    return alias


def records_databases() -> tuple[str, ...]:
    """Every database that holds records, for purge, the admin and the checks:
    ``IDEMPOTENCY["DATABASES"]``, by default the router's write database."""
    listed = _listed()
    if listed:
        return listed
    return (router.db_for_write(IdempotencyRecord) or "default",)


def _listed() -> tuple[str, ...]:
    from django_idempotency.conf import conf

    return conf.DATABASES


def expired_at(now: datetime | clock.Now) -> Q:
    """The one rule for "expired", the key free again: past ``expires_at``, holding no
    live lease, and no tombstone.

    An IN_PROGRESS record whose lease still runs is never expired, even past its
    ``expires_at`` (a view whose ``ttl`` is shorter than its lease): its attempt may
    still commit, so treating the key as free would run the work a second time.
    ``now`` is a time read from the database's clock, or ``clock.Now()`` itself.
    """
    return Q(expires_at__lte=now) & ~_live_lease(now) & ~tombstone_at(now)


def tombstone_at(now: datetime | clock.Now) -> Q:
    """The rule for a tombstone: a COMPLETED record past its ``expires_at`` by less than
    ``TOMBSTONE_TTL``. Its response is no longer replayed (purge empties it), but its key
    is not free: a late retry is told the operation completed instead of running it
    again."""
    from django_idempotency.conf import conf

    ttl = conf.TOMBSTONE_TTL
    since = now - ttl if isinstance(now, datetime) else clock.after(-ttl)
    return Q(status=Status.COMPLETED, expires_at__lte=now, expires_at__gt=since)


def _live_lease(now: datetime | clock.Now) -> Q:
    return Q(status=Status.IN_PROGRESS, locked_until__gt=now)


class _Claim(NamedTuple):
    """What ``IdempotencyRecordQuerySet.claim`` found: the new record (``created``),
    the record holding the key, or none (it was deleted in between); ``now`` is the
    database's time of that read."""

    record: IdempotencyRecord | None
    created: bool
    now: datetime | None = None


class IdempotencyRecordQuerySet(models.QuerySet["IdempotencyRecord"]):
    """Every write to records, each fenced by the attempt's ``lease_token``; and the
    operator's queries (expired, stuck, purge) on the database's clock."""

    def _sql(self) -> tuple[Statements, Any]:
        """The hot statements and the connection they run on, looked up once."""
        connection = connections[self.db]
        return statements(self.model, connection), connection

    def lookup(self, scope: str, key: str) -> IdempotencyRecord | None:
        sql, connection = self._sql()
        with connection.cursor() as cursor:
            return self._read(sql, connection, cursor, scope, key).record

    def _read(self, sql: Statements, connection: Any, cursor: Any, scope: str, key: str) -> _Claim:
        cursor.execute(sql.lookup, [scope, key])
        row = cursor.fetchone()
        if row is None:
            return _Claim(None, False)
        return _Claim(sql.instance(row, connection), False, sql.now(row, connection))

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
        liveness: str = Liveness.LEASE,
        wait: timedelta | None = None,
    ) -> _Claim:
        """Insert a new IN_PROGRESS record, or read the record that holds (scope, key).

        Returns ``(record, True)`` for the new record, ``(existing, False, now)`` when
        the key is taken, and ``(None, False)`` when the holder was deleted in between:
        claim again. The lease and expiry are the database's time plus ``lease`` and
        ``ttl``; the new record's clocked fields load when first read.

        The insert ignores conflicts instead of raising, so it needs no savepoint inside
        a transaction and leaves no error in the database log. A concurrent
        uncommitted insert of the same key makes it wait (PostgreSQL, InnoDB) until that
        transaction ends; ``wait`` bounds that wait with a lock timeout set by the insert
        itself: on PostgreSQL it stays in force for the rest of the transaction, on
        MariaDB it covers the insert only; SQLite waits its connection's ``timeout``.

        The insert comes first because a first request is the common case: it costs
        one statement, and a retry two. (One statement for both, a CTE on PostgreSQL,
        measured slower than the two: the server plans it afresh every time.)
        """
        now = clock.app_now()  # written only where the database has no clock here
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
            "liveness": str(liveness),
            "claimed_at": now,
            "created_at": now,
            "completed_at": None,
            "expires_at": now + ttl,
        }
        sql, connection = self._sql()
        if not sql.supports_ignore:
            return self._claim_or_fail(sql, values)
        statement = sql.insert
        params = sql.claim_params(values, {"locked_until": lease, "expires_at": ttl}, connection)
        if wait is not None and sql.bounded_insert is not None:
            statement = sql.bounded_insert
            params.append(lock_timeout(wait))
        elif wait is not None and sql.is_mariadb:
            seconds = max(math.ceil(wait.total_seconds()), 1)
            statement = f"SET STATEMENT innodb_lock_wait_timeout={seconds} FOR {statement}"
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            if cursor.rowcount != 1:
                return self._read(sql, connection, cursor, scope, key)
        names = [name for name in sql.names if not (sql.clocked and name in CLOCKED)]
        return _Claim(self.model.from_db(self.db, names, [values[name] for name in names]), True)

    def _claim_or_fail(self, sql: Statements, values: dict[str, Any]) -> _Claim:
        """For backends that cannot ignore a conflict (Oracle): insert, or catch the error."""
        record = self.model(**values)
        try:
            with transaction.atomic(using=self.db):
                self.model.objects.using(self.db).bulk_create([record])
        except IntegrityError:
            sql, connection = self._sql()
            with connection.cursor() as cursor:
                return self._read(sql, connection, cursor, values["scope"], values["key"])
        record._state.adding = False
        record._state.db = self.db
        return _Claim(record, True)

    def discard_expired(self, record: IdempotencyRecord) -> bool:
        """Delete ``record`` if it has expired, so that the key can be claimed afresh."""
        deleted, _count = self.filter(expired_at(clock.Now()), pk=record.pk).delete()
        return bool(deleted)

    def take_over(
        self,
        record: IdempotencyRecord,
        lease: timedelta,
        liveness: str = Liveness.LEASE,
        *,
        live: bool = False,
    ) -> IdempotencyRecord | None:
        """Give a crashed attempt's lease to a new attempt, once.

        Two retries racing for the same lease both run this UPDATE; the ``lease_token``
        condition lets exactly one of them match. The lease must have ended on the
        database's clock, unless ``live``: the caller holds the proof that its attempt
        is gone (the lock that attempt held while it worked).
        """
        token = uuid.uuid4()
        fence = Q(pk=record.pk, lease_token=record.lease_token, status=Status.IN_PROGRESS)
        if not live:
            fence &= Q(locked_until__lte=clock.Now())
        updated = self.filter(fence).update(
            lease_token=token,
            locked_until=clock.after(lease),
            claimed_at=clock.Now(),
            liveness=liveness,
            attempts=F("attempts") + 1,
        )
        if not updated:
            return None
        record.lease_token = token
        record.liveness = liveness
        record.attempts += 1
        _reload_on_read(record, "locked_until", "claimed_at")
        return record

    def lock(self, record: IdempotencyRecord, *, nowait: bool = False) -> bool:
        """Row-lock ``record`` for the rest of the transaction if its lease is still ours."""
        sql, connection = self._sql()
        with connection.cursor() as cursor:
            cursor.execute(sql.lock_nowait if nowait else sql.lock, self._leased(sql, record))
            return cursor.fetchone() is not None

    def hold_session(self, record: IdempotencyRecord) -> bool:
        """Take the session lock named for ``record``'s operation, without waiting, if the
        record still carries its lease token. ``False``: another session holds it (the
        attempt is alive), or the lease is no longer this one."""
        sql, connection = self._sql()
        assert sql.session is not None
        params = [sql.session.name(record.pk), *self._leased(sql, record)]
        with connection.cursor() as cursor:
            cursor.execute(sql.session.acquire, params)
            row = cursor.fetchone()
        return row is not None and bool(row[0])

    def end_session(self, record: IdempotencyRecord, connection: Any = None) -> None:
        """Drop the session lock named for ``record``'s operation (if this session has it)."""
        sql, own = self._sql()
        assert sql.session is not None
        with (connection or own).cursor() as cursor:
            cursor.execute(sql.session.release, [sql.session.name(record.pk)])

    def _leased(self, sql: Statements, record: IdempotencyRecord) -> list[Any]:
        connection = connections[self.db]
        return sql.where_params({"id": record.pk, "lease_token": record.lease_token}, connection)

    def finalize(
        self,
        record: IdempotencyRecord,
        *,
        status: int,
        headers: dict[str, str],
        body: bytes | None,
        ttl: timedelta,
        end_session: bool = False,
    ) -> bool:
        """Mark the attempt COMPLETED with its response; ``False`` if the lease was lost.

        ``end_session`` drops the attempt's session lock in the same statement (only if
        the record was ours: otherwise the caller must ``end_session`` itself).
        """
        now = clock.app_now()
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
        params = sql.finalize_params(values, ttl, fence, connection)
        statement = sql.finalize
        if end_session and sql.finalize_unlocking is not None:
            assert sql.session is not None
            statement = sql.finalize_unlocking
            name = sql.session.name(record.pk)
            if sql.vendor == "mysql":
                params.insert(len(params) - len(fence), name)
            else:
                params.append(name)
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            if sql.finalize_returns:
                row = cursor.fetchone()
                updated = 0 if row is None else 1
            else:
                updated = cursor.rowcount
        if updated != 1:
            return False
        for name, value in values.items():
            setattr(record, name, value)
        record.locked_until = None
        if sql.clocked:
            _reload_on_read(record, "completed_at", "expires_at")
        if sql.finalize_returns:
            record.expires_at = sql.value("expires_at", row[0], connection)
        return True

    def release(self, record: IdempotencyRecord, connection: Any = None) -> bool:
        """Forget an attempt whose writes were rolled back, so a retry runs again.

        ``connection``: another connection to this database, for when the request's own
        has failed (see ``engine``).
        """
        sql, own = self._sql()
        with (connection or own).cursor() as cursor:
            cursor.execute(sql.release, self._fence(sql, record))
            return bool(cursor.rowcount == 1)

    def unlock(self, record: IdempotencyRecord, connection: Any = None) -> bool:
        """End the lease at once but keep the record, its id and its recovery point.

        Used when work outside the database may already have happened: the retry takes
        over the same operation id, so derived downstream keys stay the same.
        """
        sql, own = self._sql()
        with (connection or own).cursor() as cursor:
            cursor.execute(sql.unlock, sql.now_params() + self._fence(sql, record))
            updated = cursor.rowcount == 1
        if updated:
            _reload_on_read(record, "locked_until")
        return bool(updated)

    def _fence(self, sql: Statements, record: IdempotencyRecord) -> list[Any]:
        """The parameters of ``WHERE id, lease_token, status = IN_PROGRESS``."""
        fence = {
            "id": record.pk,
            "lease_token": record.lease_token,
            "status": str(Status.IN_PROGRESS),
        }
        return sql.where_params(fence, connections[self.db])

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
        expired: IdempotencyRecordQuerySet = self.filter(expired_at(now or clock.Now()))
        return expired

    def stuck(self, now: datetime | None = None) -> IdempotencyRecordQuerySet:
        """IN_PROGRESS records whose lease has run out: their attempt crashed or hangs."""
        return self.filter(  # type: ignore[no-any-return]
            status=Status.IN_PROGRESS,
            locked_until__lte=now or clock.Now(),
        )

    # Operating: purge and release, for the purge command and the admin actions.

    def purgeable_expired(
        self, now: datetime, older_than: timedelta = timedelta(0)
    ) -> IdempotencyRecordQuerySet:
        """Records that expired at least ``older_than`` ago and hold no live lease nor a
        tombstone now."""
        return self.filter(  # type: ignore[no-any-return]
            Q(expires_at__lte=now - older_than) & ~_live_lease(now) & ~tombstone_at(now)
        )

    def unburied(self, now: datetime) -> IdempotencyRecordQuerySet:
        """Tombstones that still hold the response they will never replay."""
        return self.filter(  # type: ignore[no-any-return]
            tombstone_at(now) & ~Q(response_body=None, response_headers={})
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
        its own transaction and, on PostgreSQL, MySQL and SQLite, one statement: the
        server picks up to ``batch_size`` rows, in index order (``FOR UPDATE SKIP
        LOCKED`` where the database has it, so rows a request or another purge holds
        are left alone), and deletes them; no key comes to Python (``_delete_batch``).
        ``now`` is fixed when the purge starts, so a purge always ends. ``dry_run``
        only counts.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        records = self._on_write_database()
        now = now or clock.read(records.db)
        kinds: list[tuple[str, IdempotencyRecordQuerySet, tuple[str, ...]]] = [
            ("expired", records.purgeable_expired(now, older_than), ("expires_at",)),
            (
                "abandoned",
                records.purgeable_abandoned(now, older_than, grace),
                ("status", "locked_until"),
            ),
        ]
        from django_idempotency.conf import conf

        if conf.TOMBSTONE_TTL:
            kinds.append(("buried", records.unburied(now), ("expires_at",)))
        result = PurgeResult(dry_run=dry_run)
        for kind, candidates, order in kinds:
            if dry_run:
                result.add(kind, candidates.count())
                continue
            while True:
                started = time.monotonic()
                if kind == "buried":
                    selected, deleted = candidates._bury_batch(order, batch_size)
                else:
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

    def _bury_batch(self, order: tuple[str, ...], batch_size: int) -> tuple[int, int]:
        """One short transaction: empty the stored response of up to ``batch_size``
        tombstones, the condition checked again; ``(selected, emptied)``. Rare next to
        deletes (each tombstone once), so through the ORM."""
        connection = connections[self.db]
        selection = self.order_by(*order)
        if connection.features.has_select_for_update_skip_locked:
            selection = selection.select_for_update(skip_locked=True)
        with transaction.atomic(using=self.db):
            ids = list(selection.values_list("pk", flat=True)[:batch_size])
            emptied = self.filter(pk__in=ids).update(response_body=None, response_headers={})
        return len(ids), emptied

    def _delete_batch(self, order: tuple[str, ...], batch_size: int) -> tuple[int, int]:
        """One short transaction: delete up to ``batch_size`` matching rows, ``order`` first.

        Returns ``(selected, deleted)``. Where ``sql.purge_batch`` has a statement, it is
        one: the server picks the keys (skipping rows others hold locked) and deletes
        them, and both counts are its row count. Elsewhere the keys go to Python and
        back, in chunks that respect the database's parameter limit, and are deleted
        with the condition checked again.
        """
        from django.db.models.expressions import RawSQL

        from django_idempotency.sql import purge_batch, purge_row

        connection = connections[self.db]
        selection = self.order_by(*order)
        if connection.features.has_select_for_update_skip_locked:
            selection = selection.select_for_update(skip_locked=True)
        row = purge_row(connection)
        for attempt in range(_BATCH_TRIES):
            try:
                with transaction.atomic(using=self.db):
                    # Compiled once per queryset (it cost more than a small batch), inside
                    # the transaction: Django refuses FOR UPDATE outside one.
                    compiled = self.__dict__.get("_purge_statement")
                    if compiled is None or compiled[0] != (order, batch_size):
                        keys = selection
                        if row is not None:
                            keys = keys.annotate(_purge_row=RawSQL(row, ()))  # noqa: S611
                        keys = keys.values_list("_purge_row" if row else "pk", flat=True)
                        compiler = keys[:batch_size].query.get_compiler(using=self.db)
                        query, params = compiler.as_sql()
                        column = compiler.select[0][2] or self.model._meta.pk.column
                        statement = purge_batch(connection, self.model, query, column)
                        compiled = (order, batch_size), statement, params
                        self.__dict__["_purge_statement"] = compiled
                    _key, statement, params = compiled
                    if statement is not None:
                        with connection.cursor() as cursor:
                            cursor.execute(statement, params)
                            deleted = max(cursor.rowcount, 0)
                        return deleted, deleted
                    ids = selection.values_list("pk", flat=True)[:batch_size]
                    return self._delete_keys(list(ids), connection)
            except DatabaseError as exc:
                # Two purges (or a purge and live traffic) can deadlock on InnoDB's index
                # locks even with SKIP LOCKED; the batch rolled back whole, so run it again.
                if not is_lock_conflict(exc) or attempt == _BATCH_TRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _delete_keys(self, ids: list[Any], connection: Any) -> tuple[int, int]:
        limit = connection.features.max_query_params
        chunk = max(limit - 50, 1) if limit else max(len(ids), 1)
        label = self.model._meta.label
        deleted = 0
        for start in range(0, len(ids), chunk):
            rows = self.filter(pk__in=ids[start : start + chunk]).only("pk")
            deleted += rows.delete()[1].get(label, 0)
        return len(ids), deleted


class IdempotencyRecord(models.Model):
    """One intent: the key its client sent within a scope, the request's fingerprint,
    and, once done, the response every retry gets back."""

    Status = Status
    Liveness = Liveness

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
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    liveness = models.CharField(
        _("liveness"),
        max_length=8,
        choices=Liveness.choices,
        blank=True,
        default=Liveness.LEASE,
        db_default=Liveness.LEASE,
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires at"))

    objects: ClassVar[IdempotencyRecordQuerySet] = IdempotencyRecordQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        db_table = "django_idempotency_record"
        verbose_name = _("idempotency record")
        verbose_name_plural = _("idempotency records")
        permissions = [("view_stored_response", _("Can view stored response"))]
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
        """``expired_at`` in Python: past ``expires_at``, no live lease, no tombstone.

        ``now`` should come from the database's clock (``clock.read``, or the time a
        claim read with the record); by default it is read.
        """
        now = now or clock.read(self._state.db or records_database())
        live = self.status == Status.IN_PROGRESS and self.lease_is_live(now)
        return self.expires_at <= now and not live and not self.is_tombstone(now)

    def is_tombstone(self, now: datetime | None = None) -> bool:
        """``tombstone_at`` in Python."""
        from django_idempotency.conf import conf

        now = now or clock.read(self._state.db or records_database())
        if self.status != Status.COMPLETED or self.expires_at > now:
            return False
        return bool(self.expires_at > now - conf.TOMBSTONE_TTL)

    def lease_is_live(self, now: datetime | None = None) -> bool:
        if self.locked_until is None:
            return False
        return self.locked_until > (now or clock.read(self._state.db or records_database()))


def _reload_on_read(record: IdempotencyRecord, *names: str) -> None:
    """Let fields the database computed load when read (Django's deferred fields)."""
    for name in names:
        record.__dict__.pop(name, None)


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
    buried: int = 0  # tombstones whose stored response was emptied (not deleted)
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
