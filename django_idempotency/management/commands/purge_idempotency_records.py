"""``manage.py purge_idempotency_records``: a thin shell over ``IdempotencyRecordQuerySet.purge``.

Meant for cron beside live traffic: every batch is its own short transaction, rows held
by a running request or by a second purge are skipped, and a live IN_PROGRESS record is
never deleted.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from django_idempotency.conf import conf
from django_idempotency.management import batches
from django_idempotency.models import IdempotencyRecord, PurgeBatch

DURATION = re.compile(r"(\d+)([smhd])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(value: str) -> timedelta:
    """``45s``, ``90m``, ``36h``, ``2d`` or a sum of them (``1d12h``); ``ValueError`` otherwise."""
    text = value.strip().lower()
    if not text or DURATION.sub("", text):
        raise ValueError(value)
    total = timedelta(0)
    for amount, unit in DURATION.findall(text):
        total += timedelta(**{UNITS[unit]: int(amount)})
    return total


class Command(BaseCommand):
    help = (
        "Delete idempotency records that expired, and IN_PROGRESS records abandoned more "
        "than IDEMPOTENCY['PURGE_GRACE'] past their lease, in short batched transactions."
    )

    SUMMARY = "Deleted {expired} expired and {abandoned} abandoned records in {batches} batch(es)."
    DRY_RUN_SUMMARY = "Would delete {expired} expired and {abandoned} abandoned records (dry run)."
    BATCH = "Batch {number}: deleted {deleted} of {selected} {kind} records in {seconds:.3f}s."
    BURIED_BATCH = (
        "Batch {number}: emptied the stored responses of {deleted} of {selected} tombstones "
        "in {seconds:.3f}s."
    )
    BURIED = "Emptied the stored responses of {buried} tombstones (their keys stay taken)."
    DRY_RUN_BURIED = "Would empty the stored responses of {buried} tombstones (dry run)."
    BAD_DURATION = (
        "Invalid --older-than {value!r}: give a whole number followed by s, m, h or d "
        "(45s, 90m, 36h, 2d), or a sum such as 1d12h."
    )
    TOO_LONG = "Invalid --older-than {value!r}: the cutoff would be before year 1."
    BAD_BATCH_SIZE = batches.BAD_BATCH_SIZE
    DATABASE_ERROR = "Purge stopped after deleting {deleted} records: {error}"
    FAILED_ON = "Purge failed on {aliases}; the other databases were purged."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be deleted; delete nothing.",
        )
        parser.add_argument(
            "--batch-size",
            default="1000",
            help="Records deleted per transaction (default 1000).",
        )
        batches.add_database_argument(parser)
        parser.add_argument(
            "--older-than",
            default=None,
            metavar="DURATION",
            help=(
                "Keep records that expired less than DURATION ago (45s, 90m, 36h, 2d): "
                "delete those with expires_at <= now - DURATION, and IN_PROGRESS records "
                "whose lease ended more than max(DURATION, PURGE_GRACE) ago. Default: 0, "
                "every expired record."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = batches.batch_size(options["batch_size"])
        older_than = self._older_than(options["older_than"])
        self.verbosity = int(options["verbosity"])
        aliases = batches.databases(options["database"])
        failures = []
        for alias in aliases:
            try:
                self._purge(alias, older_than, batch_size, options, named=len(aliases) > 1)
            except CommandError as exc:
                if len(aliases) == 1:
                    raise
                self.stderr.write(f"{alias}: {exc}")
                failures.append(alias)
        if failures:
            raise CommandError(self.FAILED_ON.format(aliases=", ".join(failures)))

    def _purge(
        self,
        alias: str,
        older_than: timedelta,
        batch_size: int,
        options: dict[str, Any],
        *,
        named: bool,
    ) -> None:
        """Purge one database; ``named``: say which in the summary (several of them)."""
        deleted = {"count": 0}

        def on_batch(batch: PurgeBatch) -> None:
            if batch.kind != "buried":
                deleted["count"] += batch.deleted
            if self.verbosity >= 2:
                line = self.BURIED_BATCH if batch.kind == "buried" else self.BATCH
                self.stdout.write(
                    line.format(
                        number=batch.number,
                        deleted=batch.deleted,
                        selected=batch.selected,
                        kind=batch.kind,
                        seconds=batch.seconds,
                    )
                )

        records = IdempotencyRecord.objects.using(alias)
        try:
            result = records.purge(
                older_than=older_than,
                grace=conf.PURGE_GRACE,
                batch_size=batch_size,
                dry_run=options["dry_run"],
                on_batch=on_batch,
            )
        except OverflowError as exc:
            raise CommandError(self.TOO_LONG.format(value=options["older_than"])) from exc
        except DatabaseError as exc:
            raise CommandError(
                self.DATABASE_ERROR.format(deleted=deleted["count"], error=exc)
            ) from exc
        if self.verbosity >= 1:
            prefix = f"{alias}: " if named else ""
            template = self.DRY_RUN_SUMMARY if result.dry_run else self.SUMMARY
            self.stdout.write(
                prefix
                + template.format(
                    expired=result.expired, abandoned=result.abandoned, batches=result.batches
                )
            )
            if result.buried:
                line = self.DRY_RUN_BURIED if result.dry_run else self.BURIED
                self.stdout.write(prefix + line.format(buried=result.buried))

    def _older_than(self, value: str | None) -> timedelta:
        if value is None:
            return timedelta(0)
        try:
            return parse_duration(str(value))
        except ValueError:
            raise CommandError(self.BAD_DURATION.format(value=str(value))) from None
        except OverflowError:
            raise CommandError(self.TOO_LONG.format(value=str(value))) from None
