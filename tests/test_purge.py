"""purge_idempotency_records and the QuerySet methods under it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_idempotency.management.commands.purge_idempotency_records import (
    Command,
    parse_duration,
)
from django_idempotency.models import IdempotencyRecord, PurgeBatch, Status
from tests.factories import IdempotencyRecordFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
LEASE = timedelta(seconds=90)


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_idempotency_records", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture(autouse=True)
def no_tombstones(settings: Any) -> None:
    """What purge deletes once keys are free: completed records here expire with no
    tombstone (TOMBSTONE_TTL 0); tests/test_tombstones.py covers purge with them."""
    settings.IDEMPOTENCY = {**getattr(settings, "IDEMPOTENCY", {}), "TOMBSTONE_TTL": timedelta(0)}


def expired(ago: timedelta = timedelta(minutes=1), **kwargs: object) -> IdempotencyRecord:
    """A COMPLETED record whose expires_at passed ``ago``."""
    now = timezone.now()
    return IdempotencyRecordFactory(completed=True, expires_at=now - ago, **kwargs)


def in_progress(lease_ended_ago: timedelta | None, **kwargs: object) -> IdempotencyRecord:
    """IN_PROGRESS; ``None`` = live lease, else the lease ended that long ago."""
    now = timezone.now()
    locked_until = now + LEASE if lease_ended_ago is None else now - lease_ended_ago
    return IdempotencyRecordFactory(locked_until=locked_until, **kwargs)


def remaining() -> set[object]:
    return set(IdempotencyRecord.objects.values_list("pk", flat=True))


class TestWhatIsDeleted:
    def test_expired_records_go_and_live_ones_stay(self):
        old = [expired() for _ in range(3)]
        live = IdempotencyRecordFactory(completed=True)
        running = in_progress(None)
        assert purge() == Command.SUMMARY.format(expired=3, abandoned=0, batches=1) + "\n"
        assert remaining() == {live.pk, running.pk}
        assert not {record.pk for record in old} & remaining()

    def test_abandoned_in_progress_goes_after_the_grace_period(self):
        abandoned = in_progress(timedelta(days=1, minutes=1))
        recent = in_progress(timedelta(hours=23))
        assert purge() == Command.SUMMARY.format(expired=0, abandoned=1, batches=1) + "\n"
        assert remaining() == {recent.pk}
        assert abandoned.pk not in remaining()

    def test_grace_period_is_a_setting(self, settings):
        settings.IDEMPOTENCY = {"PURGE_GRACE": timedelta(hours=1)}
        in_progress(timedelta(hours=2))
        kept = in_progress(timedelta(minutes=30))
        purge()
        assert remaining() == {kept.pk}

    def test_live_in_progress_record_is_kept_even_past_expires_at(self):
        # A view guarded with a ttl shorter than its lease: the attempt may still commit.
        running = in_progress(None, expires_at=timezone.now() - timedelta(hours=1))
        assert purge() == Command.SUMMARY.format(expired=0, abandoned=0, batches=0) + "\n"
        assert remaining() == {running.pk}

    def test_expired_in_progress_record_with_a_dead_lease_goes(self):
        in_progress(timedelta(seconds=1), expires_at=timezone.now() - timedelta(seconds=1))
        assert purge() == Command.SUMMARY.format(expired=1, abandoned=0, batches=1) + "\n"
        assert remaining() == set()

    def test_nothing_to_do(self):
        assert purge() == Command.SUMMARY.format(expired=0, abandoned=0, batches=0) + "\n"

    def test_running_twice_is_harmless(self):
        expired()
        purge()
        assert purge() == Command.SUMMARY.format(expired=0, abandoned=0, batches=0) + "\n"


class TestOlderThan:
    def test_keeps_records_that_expired_more_recently(self):
        expired(timedelta(hours=3))
        kept = expired(timedelta(hours=1))
        output = purge("--older-than", "2h")
        assert output == Command.SUMMARY.format(expired=1, abandoned=0, batches=1) + "\n"
        assert remaining() == {kept.pk}

    def test_boundary_is_inclusive_of_older_records(self):
        expired(timedelta(days=2, seconds=5))
        kept = expired(timedelta(days=2) - timedelta(seconds=5))
        purge("--older-than", "2d")
        assert remaining() == {kept.pk}

    def test_moves_the_abandoned_cutoff_when_longer_than_the_grace(self):
        gone = in_progress(timedelta(days=3))
        kept = in_progress(timedelta(days=1, hours=1))  # past the 1-day grace, not 2 days
        purge("--older-than", "2d")
        assert remaining() == {kept.pk}
        assert gone.pk not in remaining()

    def test_shorter_than_the_grace_keeps_the_grace(self):
        kept = in_progress(timedelta(hours=2))
        purge("--older-than", "90m")
        assert remaining() == {kept.pk}

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("45s", timedelta(seconds=45)),
            ("90m", timedelta(minutes=90)),
            ("36h", timedelta(hours=36)),
            ("2d", timedelta(days=2)),
            ("1d12h", timedelta(days=1, hours=12)),
            (" 0s ", timedelta(0)),
            ("2D", timedelta(days=2)),
        ],
    )
    def test_parse_duration(self, text, expected):
        assert parse_duration(text) == expected


class TestOutput:
    def test_dry_run_counts_and_deletes_nothing(self):
        expired()
        expired()
        in_progress(timedelta(days=2))
        in_progress(None)
        before = remaining()
        output = purge("--dry-run")
        assert output == Command.DRY_RUN_SUMMARY.format(expired=2, abandoned=1) + "\n"
        assert remaining() == before

    def test_verbosity_0_is_silent(self):
        expired()
        assert purge("-v", "0") == ""
        assert remaining() == set()

    def test_verbosity_2_prints_a_line_per_batch(self):
        for _ in range(5):
            expired()
        in_progress(timedelta(days=2))
        lines = purge("--batch-size", "2", "-v", "2").splitlines()
        batch_line = re.compile(
            r"Batch (\d): deleted (\d) of (\d) (expired|abandoned) records in \d+\.\d{3}s\."
        )
        batches = [batch_line.fullmatch(line) for line in lines[:-1]]
        assert all(batches), lines
        assert [match.groups() for match in batches if match] == [
            ("1", "2", "2", "expired"),
            ("2", "2", "2", "expired"),
            ("3", "1", "1", "expired"),
            ("4", "1", "1", "abandoned"),
        ]
        assert lines[-1] == Command.SUMMARY.format(expired=5, abandoned=1, batches=4)

    def test_full_last_batch_ends_with_an_empty_selection(self):
        for _ in range(4):
            expired()
        assert purge("--batch-size", "2") == (
            Command.SUMMARY.format(expired=4, abandoned=0, batches=2) + "\n"
        )


class TestBadInput:
    @pytest.mark.parametrize("value", ["2x", "", "d", "-1d", "1.5h", "2 days", "h2", "1d 2h"])
    def test_bad_duration(self, value):
        with pytest.raises(CommandError) as excinfo:
            purge(f"--older-than={value}")
        assert str(excinfo.value) == Command.BAD_DURATION.format(value=value)

    @pytest.mark.parametrize("value", ["99999999999d", "999999999d"])
    def test_duration_too_long(self, value):
        expired()
        with pytest.raises(CommandError) as excinfo:
            purge(f"--older-than={value}")
        assert str(excinfo.value) == Command.TOO_LONG.format(value=value)
        assert len(remaining()) == 1

    @pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", ""])
    def test_bad_batch_size(self, value):
        expired()
        with pytest.raises(CommandError) as excinfo:
            purge(f"--batch-size={value}")
        assert str(excinfo.value) == Command.BAD_BATCH_SIZE.format(value=value)
        assert len(remaining()) == 1

    def test_queryset_refuses_a_batch_size_below_one(self):
        with pytest.raises(ValueError, match="at least 1"):
            IdempotencyRecord.objects.purge(batch_size=0)

    def test_exits_non_zero_from_the_command_line(self):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        result = subprocess.run(
            [sys.executable, "-m", "django", "purge_idempotency_records", "--batch-size", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1
        assert Command.BAD_BATCH_SIZE.format(value="0") in result.stderr


class TestQuerySetMethod:
    def test_reports_each_batch(self):
        for _ in range(3):
            expired()
        batches: list[PurgeBatch] = []
        result = IdempotencyRecord.objects.purge(batch_size=2, on_batch=batches.append)
        assert [(b.number, b.kind, b.selected, b.deleted) for b in batches] == [
            (1, "expired", 2, 2),
            (2, "expired", 1, 1),
        ]
        assert all(b.seconds >= 0 for b in batches)
        assert (result.expired, result.abandoned, result.batches, result.total) == (3, 0, 2, 3)
        assert result.longest_batch == max(b.seconds for b in batches)

    def test_works_on_a_filtered_queryset(self):
        mine = expired(scope="user:1")
        theirs = expired(scope="user:2")
        IdempotencyRecord.objects.filter(scope="user:1").purge()
        assert remaining() == {theirs.pk}
        assert mine.pk not in remaining()

    def test_never_loads_rows_only_their_keys(self):
        for _ in range(3):
            expired(response_body=b"x" * 1000)
        with CaptureQueriesContext(connection) as queries:
            IdempotencyRecord.objects.purge(batch_size=2)
        selects = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
        assert selects
        for sql in selects:
            columns = sql.upper().split(" FROM ")[0]
            assert "RESPONSE_BODY" not in columns
            assert "FINGERPRINT" not in columns
        assert remaining() == set()

    def test_each_batch_is_one_statement_without_keys(self):
        for _ in range(7):
            expired()
        in_progress(timedelta(days=2))
        with CaptureQueriesContext(connection) as queries:
            result = IdempotencyRecord.objects.purge(batch_size=5)
        statements = [
            q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("SELECT", "DELETE"))
        ]
        # The database's clock, then per batch one DELETE: 5 + 2 expired, 1 abandoned (the
        # selection of each kind ends when a batch deletes fewer than batch_size).
        assert len(statements) == 4
        assert statements[0].upper().startswith("SELECT")
        assert all(sql.upper().startswith("DELETE") for sql in statements[1:])
        assert (result.expired, result.abandoned, result.batches) == (7, 1, 3)
        assert remaining() == set()

    def test_a_batch_sends_the_same_parameters_whatever_its_size(self):
        def batch_parameters(batch_size: int) -> list[int]:
            expired()
            sent: list[int] = []

            def count(execute, sql, params, many, context):
                if sql.lstrip().upper().startswith("DELETE"):
                    sent.append(len(params or ()))
                return execute(sql, params, many, context)

            with connection.execute_wrapper(count):
                IdempotencyRecord.objects.purge(batch_size=batch_size)
            return sent

        assert batch_parameters(2) == batch_parameters(10_000)

    def test_chunks_keys_to_the_parameter_limit_without_one_statement(self, monkeypatch):
        """Backends ``sql.purge_batch`` has no statement for send the keys back in chunks."""
        monkeypatch.setattr("django_idempotency.sql.purge_batch", lambda *args: None)
        # On the class: Django 6 makes it a read-only property on some backends.
        monkeypatch.setattr(type(connection.features), "max_query_params", 52)
        for _ in range(7):
            expired()
        with CaptureQueriesContext(connection) as queries:
            result = IdempotencyRecord.objects.purge(batch_size=5)
        deletes = [q for q in queries if q["sql"].lstrip().upper().startswith("DELETE")]
        assert result.expired == 7
        assert result.batches == 2
        # A limit of 52 leaves room for 2 keys per DELETE: batch 1 is 2+2+1, batch 2 is 2.
        assert len(deletes) == 4

    def test_batch_delete_checks_the_condition_again(self):
        """A retry takes the lease over between the selection and the delete."""
        record = in_progress(timedelta(days=2))
        taken_over = {"done": False}

        def take_over_before_delete(execute, sql, params, many, context):
            if sql.lstrip().upper().startswith("DELETE") and not taken_over["done"]:
                taken_over["done"] = True
                IdempotencyRecord.objects.filter(pk=record.pk).update(
                    locked_until=timezone.now() + LEASE, attempts=2
                )
            return execute(sql, params, many, context)

        with connection.execute_wrapper(take_over_before_delete):
            result = IdempotencyRecord.objects.purge()
        assert taken_over["done"]
        assert result.abandoned == 0
        assert IdempotencyRecord.objects.get(pk=record.pk).attempts == 2


class TestReleaseStuck:
    def test_releases_stuck_keeps_live_and_checkpointed(self):
        stuck = in_progress(timedelta(seconds=5))
        checkpointed = in_progress(timedelta(seconds=5), recovery_point="charged")
        running = in_progress(None)
        done = IdempotencyRecordFactory(completed=True)
        assert IdempotencyRecord.objects.release_stuck() == (1, 1)
        assert remaining() == {checkpointed.pk, running.pk, done.pk}
        assert stuck.pk not in remaining()

    def test_in_batches(self):
        for _ in range(5):
            in_progress(timedelta(seconds=5))
        assert IdempotencyRecord.objects.release_stuck(batch_size=2) == (5, 0)
        assert remaining() == set()


needs_row_locks = pytest.mark.skipif(
    "sqlite" in os.environ.get("DATABASE_URL", "sqlite"),
    reason="SQLite has no row locks: one writer at a time",
)


@pytest.mark.concurrency
@needs_row_locks
@pytest.mark.django_db(transaction=True)
class TestBesideLiveTraffic:
    def test_skips_a_row_a_request_holds_and_does_not_wait_for_it(self):
        held = expired()
        others = [expired() for _ in range(3)]
        locked = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []

        def request_holding_the_row():
            try:
                with transaction.atomic():
                    list(IdempotencyRecord.objects.select_for_update().filter(pk=held.pk))
                    locked.set()
                    release.wait(30)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                locked.set()
            finally:
                connections.close_all()

        thread = threading.Thread(target=request_holding_the_row)
        thread.start()
        try:
            assert locked.wait(30)
            result = IdempotencyRecord.objects.purge(batch_size=2)
        finally:
            release.set()
            thread.join(30)
        assert not errors
        assert result.expired == 3
        assert remaining() == {held.pk}
        assert not {record.pk for record in others} & remaining()

    def test_keeps_an_abandoned_record_a_retry_is_taking_over(self):
        """The take-over's UPDATE (a live lease, not yet committed) races the batch."""
        record = in_progress(timedelta(days=2))
        others = [in_progress(timedelta(days=2)) for _ in range(3)]
        updated = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []

        def retry_taking_over():
            try:
                with transaction.atomic():
                    IdempotencyRecord.objects.filter(pk=record.pk).update(
                        locked_until=timezone.now() + LEASE, attempts=2
                    )
                    updated.set()
                    release.wait(30)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                updated.set()
            finally:
                connections.close_all()

        thread = threading.Thread(target=retry_taking_over)
        thread.start()
        try:
            assert updated.wait(30)
            result = IdempotencyRecord.objects.purge(batch_size=2)
        finally:
            release.set()
            thread.join(30)
        assert not errors
        assert result.abandoned == 3
        assert remaining() == {record.pk}
        assert not {other.pk for other in others} & remaining()
        assert IdempotencyRecord.objects.get(pk=record.pk).attempts == 2
        assert IdempotencyRecord.objects.purge().total == 0

    def test_two_purges_at_once_delete_each_row_once(self):
        for _ in range(60):
            expired()
        live = IdempotencyRecordFactory(completed=True)
        start = threading.Barrier(2)
        results: list[int] = []
        errors: list[BaseException] = []

        def run():
            try:
                start.wait(30)
                results.append(IdempotencyRecord.objects.purge(batch_size=5).total)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert remaining() == {live.pk}
        assert sum(results) == 60
        assert IdempotencyRecord.objects.filter(status=Status.COMPLETED).count() == 1
