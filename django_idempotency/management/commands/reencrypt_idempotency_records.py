"""``manage.py reencrypt_idempotency_records``: every stored response under the newest key.

Run it after putting a new key first in ``IDEMPOTENCY["ENCRYPTION_KEYS"]`` (and after
every server runs with the new list), so that the old key can be removed; or after
turning encryption on, to encrypt the records stored in the clear before. Only
completed records that are not under the newest key yet are selected (the key's id is
stored beside the ciphertext), in batches walked by primary key, so the command always
ends and a second run finds nothing to do.

Records of ``once()`` blocks are left alone: ``once`` stores its result in the clear and
reads it back without decrypting.

Beside live traffic: IN_PROGRESS records are left alone (their finalize writes under the
newest key anyway), and each record is written by its own UPDATE fenced by its primary
key, its status and the value that was read, so a record that changed meanwhile (purged,
or re-encrypted by a second run) is skipped instead of overwritten.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.db.models import Q

from django_idempotency import encryption
from django_idempotency.conf import conf
from django_idempotency.management import batches
from django_idempotency.models import (
    IdempotencyRecord,
    IdempotencyRecordQuerySet,
    Status,
)

KEY_LOOKUP = f"response_headers__{encryption.KEY}"
HEADERS_LOOKUP = f"response_headers__{encryption.HEADERS}"


class Command(BaseCommand):
    help = (
        "Re-encrypt stored responses under the newest key of IDEMPOTENCY['ENCRYPTION_KEYS'] "
        "(and encrypt those stored in the clear), in batches, beside live traffic."
    )

    SUMMARY = (
        "Re-encrypted {done} records in {batches} batch(es); {skipped} changed meanwhile "
        "and were left alone."
    )
    DRY_RUN_SUMMARY = (
        "Would re-encrypt {total} records: {plaintext} stored in the clear, {older} under "
        "an older key (dry run)."
    )
    BATCH = (
        "Batch {number}: re-encrypted {done} of {selected} records ({total} so far) in "
        "{seconds:.3f}s."
    )
    NO_KEYS = "IDEMPOTENCY['ENCRYPTION_KEYS'] is empty: there is no key to encrypt under."
    BAD_KEYS = "IDEMPOTENCY['ENCRYPTION_KEYS'] {problem}: run manage.py check."
    BAD_BATCH_SIZE = batches.BAD_BATCH_SIZE
    UNDECRYPTABLE = (
        "{count} records could not be decrypted with any configured key and were left as "
        "they are (first ids: {ids}). Add the key they were encrypted under to "
        "ENCRYPTION_KEYS and run the command again; until then their replays answer 503."
    )
    DATABASE_ERROR = "Stopped after re-encrypting {done} records: {error}. Run it again to go on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count the records that would be re-encrypted; change nothing.",
        )
        parser.add_argument(
            "--batch-size",
            default="500",
            help="Records read per batch (default 500); each is written by its own UPDATE.",
        )
        batches.add_database_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = batches.batch_size(options["batch_size"])
        self.verbosity = int(options["verbosity"])
        keys = conf.ENCRYPTION_KEYS
        if not keys:
            raise CommandError(self.NO_KEYS)
        problem = encryption.malformed_keys(list(keys))
        if problem is not None:
            raise CommandError(self.BAD_KEYS.format(problem=problem))
        if encryption.package_missing():
            raise CommandError(encryption.MISSING_PACKAGE)
        newest = encryption.newest_key_id()
        assert newest is not None
        for alias in batches.databases(options["database"]):
            self._reencrypt(IdempotencyRecord.objects.using(alias), newest, batch_size, options)

    def _reencrypt(
        self,
        records: IdempotencyRecordQuerySet,
        newest: str,
        batch_size: int,
        options: dict[str, Any],
    ) -> None:
        candidates = stale(records, newest)
        if options["dry_run"]:
            plaintext = candidates.filter(~Q(response_headers__has_key=encryption.KEY)).count()
            total = candidates.count()
            if self.verbosity >= 1:
                self.stdout.write(
                    self.DRY_RUN_SUMMARY.format(
                        total=total, plaintext=plaintext, older=total - plaintext
                    )
                )
            return
        self._run(records, candidates, batch_size)

    def _run(
        self,
        records: IdempotencyRecordQuerySet,
        candidates: IdempotencyRecordQuerySet,
        batch_size: int,
    ) -> None:
        done = skipped = batches = 0
        undecryptable: list[str] = []
        last: Any = None
        fields = ("pk", "status", "response_status", "response_headers", "response_body")
        while True:
            started = time.monotonic()
            page = candidates.order_by("pk").only(*fields)
            if last is not None:
                page = page.filter(pk__gt=last)
            try:
                batch = list(page[:batch_size])
                if not batch:
                    break
                batch_done = 0
                for record in batch:
                    try:
                        written = rewrite(records, record)
                    except encryption.CannotDecrypt:
                        undecryptable.append(str(record.pk))
                        continue
                    batch_done += written
                    skipped += not written
            except DatabaseError as exc:
                raise CommandError(self.DATABASE_ERROR.format(done=done, error=exc)) from exc
            done += batch_done
            batches += 1
            last = batch[-1].pk
            if self.verbosity >= 1:
                self.stdout.write(
                    self.BATCH.format(
                        number=batches,
                        done=batch_done,
                        selected=len(batch),
                        total=done,
                        seconds=time.monotonic() - started,
                    )
                )
            if len(batch) < batch_size:
                break
        if self.verbosity >= 1:
            self.stdout.write(self.SUMMARY.format(done=done, batches=batches, skipped=skipped))
        if undecryptable:
            raise CommandError(
                self.UNDECRYPTABLE.format(
                    count=len(undecryptable), ids=", ".join(undecryptable[:5])
                )
            )


def stale(records: IdempotencyRecordQuerySet, newest: str) -> IdempotencyRecordQuerySet:
    """Completed records not under the key ``newest``: in the clear, or under another key.

    Spelled with ``has_key`` on both sides: ``exclude(key=newest)`` alone would drop the
    plaintext records, whose missing key compares as NULL.
    """
    plaintext = ~Q(response_headers__has_key=encryption.KEY)
    older = Q(response_headers__has_key=encryption.KEY) & ~Q(**{KEY_LOOKUP: newest})
    found: IdempotencyRecordQuerySet = records.filter(plaintext | older, status=Status.COMPLETED)
    return found


def rewrite(records: IdempotencyRecordQuerySet, record: IdempotencyRecord) -> bool:
    """Write ``record``'s response under the newest key if it still holds what was read."""
    sealed = encryption.reseal(
        record.response_status or 0, record.response_headers, record.response_body
    )
    if sealed is None:
        return False
    headers, body = sealed
    fence = Q(pk=record.pk, status=Status.COMPLETED)
    if encryption.is_encrypted(record.response_headers):
        fence &= Q(**{HEADERS_LOOKUP: record.response_headers[encryption.HEADERS]})
    else:
        fence &= ~Q(response_headers__has_key=encryption.KEY)
    return bool(records.filter(fence).update(response_headers=headers, response_body=body))
