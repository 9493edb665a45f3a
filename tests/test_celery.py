"""``idempotent_task``: in-process (eager) for the API, then against a real worker process.

The worker tests start ``celery worker`` as a subprocess with the test run's settings,
a RabbitMQ broker (``IDEM_CELERY_BROKER``, default ``amqp://guest:guest@127.0.0.1:5672//``)
and the test run's database: pytest-django's ``test_<name>`` database on PostgreSQL and
MariaDB. An in-memory SQLite database cannot be shared with another process, so on
SQLite the worker tests run against a migrated SQLite *file* instead.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from django.db import OperationalError, connection

from django_idempotency.keys import InvalidKey
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet, Status
from django_idempotency.once import Busy, KeyReused
from tests.factories import IdempotencyRecordFactory
from tests.testapp.models import Order

celery = pytest.importorskip("celery", reason="celery is not installed")

from django_idempotency.celery import (  # noqa: E402
    _GRACE,
    _MAX_COUNTDOWN,
    _plan_wait,
    _wait_countdown,
    idempotent_task,
)
from tests.celery_app.app import app  # noqa: E402
from tests.celery_app.tasks import bound, pay_invoice, place_order  # noqa: E402
from tests.celery_wait_app import slow_order  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("IDEM_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
TIMEOUT = 90


# --- the API, run eagerly in this process -------------------------------------------


@pytest.mark.django_db
class TestEager:
    def test_a_redelivered_message_replays_the_stored_result(self) -> None:
        task_id = str(uuid.uuid4())
        first = place_order.apply(args=["a"], task_id=task_id).get()
        again = place_order.apply(args=["a"], task_id=task_id).get()

        assert first == again == {"order": Order.objects.get().pk, "reference": "a"}
        record = IdempotencyRecord.objects.get()
        assert (record.scope, record.key) == ("celery:tests.celery_app.tasks.place_order", task_id)
        assert record.status == Status.COMPLETED

    def test_each_message_runs(self) -> None:
        place_order.apply(args=["a"])
        place_order.apply(args=["a"])
        assert Order.objects.count() == 2

    def test_a_key_function_dedups_two_messages_with_one_intent(self) -> None:
        first = pay_invoice.apply(args=[7, 100]).get()
        second = pay_invoice.apply(kwargs={"invoice": 7, "amount": 100}).get()

        assert first == second
        assert Order.objects.count() == 1
        assert IdempotencyRecord.objects.get().key == "invoice:7:paid"

    def test_the_same_key_with_other_arguments_fails_the_task(self) -> None:
        pay_invoice.apply(args=[7, 100]).get()
        result = pay_invoice.apply(args=[7, 999])

        assert result.failed()
        with pytest.raises(KeyReused):
            result.get()
        assert Order.objects.count() == 1

    def test_bind_passes_the_task(self) -> None:
        task_id = str(uuid.uuid4())
        assert bound.apply(args=["b"], task_id=task_id).get() == {"task_id": task_id}
        assert bound.apply(args=["b"], task_id=task_id).get() == {"task_id": task_id}
        assert Order.objects.count() == 1

    def test_a_direct_call_has_no_message_and_just_runs(self) -> None:
        place_order("direct")
        place_order("direct")
        assert Order.objects.count() == 2
        assert not IdempotencyRecord.objects.exists()

    def test_delay_checks_the_arguments_against_the_task_signature(self) -> None:
        with pytest.raises(TypeError):
            place_order.delay("a", "b", "c", "too many")

    def test_reliable_delivery_options_are_the_defaults(self) -> None:
        assert place_order.acks_late is True
        assert place_order.reject_on_worker_lost is True
        assert bound.max_retries == 2

    def test_a_message_still_in_progress_elsewhere_is_retried_not_acknowledged(self) -> None:
        task_id = str(uuid.uuid4())
        IdempotencyRecordFactory(
            scope="celery:tests.celery_app.tasks.bound",
            key=task_id,
            fingerprint=_fingerprint({"reference": "b"}),
        )
        result = bound.apply(args=["b"], task_id=task_id)

        # Eager retries run at once; after max_retries the last Busy surfaces.
        assert result.failed()
        assert type(result.result).__name__ == "Busy"
        assert not Order.objects.exists()

    def test_an_unreachable_store_is_retried_not_acknowledged(self) -> None:
        lost = OperationalError("server closed the connection unexpectedly")
        with mock.patch.object(IdempotencyRecordQuerySet, "claim", side_effect=lost) as claim:
            result = bound.apply(args=["b"])

        assert result.failed()
        assert type(result.result).__name__ == "Unavailable"
        assert claim.call_count == 3  # the first try and bound's max_retries=2
        assert not Order.objects.exists()


@idempotent_task(app=app, key=lambda message: message["id"], autoretry_for=(Exception,))
def autoretried(message: dict[str, Any]) -> dict[str, Any]:
    Order.objects.create(reference=str(message["id"]))
    return {"id": message["id"]}


@pytest.mark.django_db
class TestUnfitKeys:
    """A key the record cannot hold fails the task at once: retrying never makes it fit."""

    @pytest.mark.parametrize("key", ["msg\x00:1", "msg:1 ", "", "k" * 256, "a\x7fb"])
    def test_an_unfit_key_fails_at_once_without_touching_the_store(self, key: str) -> None:
        with mock.patch.object(IdempotencyRecordQuerySet, "claim") as claim:
            result = autoretried.apply(args=[{"id": key}])

        assert result.failed()
        assert isinstance(result.result, InvalidKey)
        assert isinstance(result.result, ValueError)
        assert claim.call_count == 0  # no autoretry, no retry, no claim
        assert not Order.objects.exists()

    def test_an_unfit_task_id_fails_at_once(self) -> None:
        result = place_order.apply(args=["a"], task_id="task\x00id")

        assert result.failed()
        assert isinstance(result.result, InvalidKey)
        assert not IdempotencyRecord.objects.exists()
        assert not Order.objects.exists()

    def test_a_reused_key_is_not_autoretried_either(self) -> None:
        autoretried.apply(args=[{"id": "m1"}]).get()
        claim = IdempotencyRecordQuerySet.claim
        with mock.patch.object(
            IdempotencyRecordQuerySet, "claim", autospec=True, side_effect=claim
        ) as spy:
            result = autoretried.apply(args=[{"id": "m1", "other": True}])
        assert isinstance(result.result, KeyReused)
        assert spy.call_count == 1
        assert Order.objects.count() == 1

    def test_autoretry_options_of_the_caller_are_kept(self) -> None:
        assert autoretried.autoretry_for == (Exception,)
        assert InvalidKey in autoretried.dont_autoretry_for
        assert KeyReused in autoretried.dont_autoretry_for


class TestDuplicateWaits:
    """How long a duplicate waits for the running attempt (``_plan_wait``, no clock)."""

    LEASE = timedelta(seconds=90)

    def test_a_live_committed_lease_is_waited_for_capped(self) -> None:
        countdown, state = _plan_wait(
            Busy("running", 60, reason="in_progress"), None, self.LEASE, now=1000.0
        )
        assert countdown == _MAX_COUNTDOWN
        assert state == {"until": 1060.0, "waits": 1}

    def test_a_lease_about_to_end_is_waited_for_until_then(self) -> None:
        countdown, _state = _plan_wait(
            Busy("running", 1, reason="in_progress"), None, self.LEASE, now=1000.0
        )
        assert countdown == 1.0

    def test_an_invisible_attempt_is_given_one_lease_from_the_first_refusal(self) -> None:
        first = _plan_wait(Busy("lock", 1, reason="lock"), None, self.LEASE, now=1000.0)
        assert first == (1.0, {"until": 1090.0, "waits": 1})
        later = _plan_wait(Busy("lock", 1, reason="lock"), first[1], self.LEASE, now=1050.0)
        assert later == (2.0, {"until": 1090.0, "waits": 2})  # the deadline does not move

    def test_waiting_ends_a_grace_after_the_lease(self) -> None:
        state = {"until": 1090.0, "waits": 12}
        grace = _GRACE.total_seconds()
        busy = Busy("lock", 1, reason="lock")
        assert _plan_wait(busy, state, self.LEASE, now=1090.0 + grace) is not None
        assert _plan_wait(busy, state, self.LEASE, now=1090.0 + grace + 1) is None

    def test_a_lease_taken_over_by_another_attempt_is_waited_for_again(self) -> None:
        """A committed record's lease is read afresh each time: a new attempt, a new lease."""
        state = {"until": 1090.0, "waits": 12}
        late = 1090.0 + _GRACE.total_seconds() + 5
        busy = Busy("running", 80, reason="in_progress")
        assert _plan_wait(busy, state, self.LEASE, now=late) == (
            _MAX_COUNTDOWN,
            {"until": late + 80, "waits": 13},
        )

    def test_the_countdown_backs_off_to_the_cap(self) -> None:
        busy = Busy("lock", 1, reason="lock")
        assert [_wait_countdown(busy, n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
        assert _MAX_COUNTDOWN == 10


def _fingerprint(payload: Any) -> str:
    from django_idempotency.once import _fingerprint

    return _fingerprint(payload)


# --- a real worker process -------------------------------------------------------------


def _broker_reachable() -> bool:
    parts = urlsplit(BROKER)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@dataclass
class WorkerDatabase:
    """The database the worker writes to, and how this test reads it back."""

    url: str
    sqlite_file: Path | None = None

    def orders(self, reference: str) -> int:
        if self.sqlite_file is None:
            return Order.objects.filter(reference=reference).count()
        with sqlite3.connect(self.sqlite_file) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM testapp_order WHERE reference = ?", [reference]
            ).fetchone()
        return int(row[0])

    def completed_records(self) -> int:
        if self.sqlite_file is None:
            return IdempotencyRecord.objects.filter(status=Status.COMPLETED).count()
        with sqlite3.connect(self.sqlite_file) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM django_idempotency_record WHERE status = 'completed'"
            ).fetchone()
        return int(row[0])


def _database_url() -> str:
    """A URL for the test run's database, as ``tests/settings.py`` parses it."""
    settings = connection.settings_dict
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    user = quote(settings["USER"] or "")
    password = f":{quote(settings['PASSWORD'])}" if settings.get("PASSWORD") else ""
    host = settings["HOST"] or "127.0.0.1"
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return f"{scheme}://{user}{password}@{host}{port}/{settings['NAME']}"


@pytest.fixture
def worker_database(transactional_db: None, tmp_path: Path) -> WorkerDatabase:
    """The test run's database (committed, so the worker sees it), or an SQLite file."""
    if connection.vendor != "sqlite":
        return WorkerDatabase(_database_url())
    path = tmp_path / "worker.sqlite3"
    url = f"sqlite:///{path}"
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=_environment(url),
        check=True,
        timeout=120,
    )
    return WorkerDatabase(url, path)


def _environment(
    database_url: str, queue: str = "", settings: str = "tests.settings"
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE=settings,
        DATABASE_URL=database_url,
        PYTHONPATH=str(ROOT),
        IDEM_CELERY_BROKER=BROKER,
        IDEM_CELERY_QUEUE=queue,
    )
    return env


class Worker:
    """One ``celery worker`` process group (a main process and one pool process)."""

    def __init__(
        self,
        database: WorkerDatabase,
        queue: str,
        log: Path,
        app: str = "tests.celery_app.app",
        settings: str = "tests.settings",
    ) -> None:
        self.log = log
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            queue,
            "-n",
            f"{queue}-{uuid.uuid4().hex[:6]}@%h",
        ]
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_environment(database.url, queue, settings),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool, no chance to clean up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"idempotency-test-{uuid.uuid4().hex[:12]}"
    yield name
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(name)


class Workers:
    """The worker processes of one test; their logs explain any failure."""

    def __init__(self, database: WorkerDatabase, queue: str, directory: Path) -> None:
        self.database = database
        self.queue = queue
        self.directory = directory
        self.started: list[Worker] = []

    def start(self, **options: str) -> Worker:
        log = self.directory / f"worker-{len(self.started)}.log"
        worker = Worker(self.database, self.queue, log, **options)
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(
            f"--- {worker.log.name}\n" + worker.log.read_text()[-4000:]
            for worker in self.started
            if worker.log.exists()
        )

    def wait_for(self, marker: Path, event: str) -> int:
        """The pid of the pool process that logged ``event``, once it has."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if marker.exists():
                for line in marker.read_text().splitlines():
                    pid, logged = line.split(" ", 1)
                    if logged == event:
                        return int(pid)
            time.sleep(0.05)
        raise AssertionError(f"the task never logged {event!r}; worker logs:\n{self.logs()}")

    def result(self, result: Any) -> Any:
        try:
            return result.get(timeout=TIMEOUT)
        except celery.exceptions.TimeoutError:
            raise AssertionError(f"no result in {TIMEOUT}s; worker logs:\n{self.logs()}")


@pytest.fixture
def workers(worker_database: WorkerDatabase, queue: str, tmp_path: Path) -> Iterator[Workers]:
    if not _broker_reachable():
        pytest.skip(f"no message broker at {BROKER} (start RabbitMQ, or set IDEM_CELERY_BROKER)")
    started = Workers(worker_database, queue, tmp_path)
    yield started
    for worker in started.started:
        worker.stop()


def _events(marker: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in marker.read_text().splitlines()]


worker_test = pytest.mark.skipif(
    sys.platform == "win32", reason="the worker tests send POSIX signals"
)


@worker_test
def test_a_worker_runs_each_message_once(
    workers: Workers, worker_database: WorkerDatabase, queue: str
) -> None:
    workers.start()
    task_id = str(uuid.uuid4())
    first = place_order.apply_async(args=["plain"], queue=queue, task_id=task_id)
    assert workers.result(first)["reference"] == "plain"
    # The same message published again (same id): replayed, not run.
    again = place_order.apply_async(args=["plain"], queue=queue, task_id=task_id)

    assert workers.result(again) == first.get()
    assert worker_database.orders("plain") == 1
    assert worker_database.completed_records() == 1


@worker_test
def test_pool_process_killed_before_commit_redelivers_and_writes_once(
    workers: Workers, worker_database: WorkerDatabase, queue: str, tmp_path: Path
) -> None:
    """SIGKILL inside the transaction: nothing committed; the redelivery runs it again."""
    workers.start()
    marker = tmp_path / "before.marker"
    result = place_order.apply_async(
        args=["before"], kwargs={"marker": str(marker), "block": "before_commit"}, queue=queue
    )
    os.kill(workers.wait_for(marker, "blocking"), signal.SIGKILL)

    answer = workers.result(result)

    assert _events(marker) == ["run", "blocking", "run"]  # the body ran again
    assert worker_database.orders("before") == 1
    assert answer["reference"] == "before"
    assert worker_database.completed_records() == 1


@worker_test
def test_pool_process_killed_after_commit_redelivers_and_replays(
    workers: Workers, worker_database: WorkerDatabase, queue: str, tmp_path: Path
) -> None:
    """SIGKILL after the commit, before the ack: the redelivery must not write again."""
    workers.start()
    marker = tmp_path / "after.marker"
    result = place_order.apply_async(
        args=["after"], kwargs={"marker": str(marker), "block": "after_commit"}, queue=queue
    )
    os.kill(workers.wait_for(marker, "blocking"), signal.SIGKILL)

    answer = workers.result(result)

    assert _events(marker) == ["run", "blocking"]  # the body did not run again
    assert worker_database.orders("after") == 1
    assert answer["reference"] == "after"
    assert worker_database.completed_records() == 1


@worker_test
def test_whole_worker_killed_after_commit_another_worker_replays(
    workers: Workers, worker_database: WorkerDatabase, queue: str, tmp_path: Path
) -> None:
    """The broker requeues the unacknowledged message when the dead worker's connection
    drops; a fresh worker gets it and replays the stored result."""
    first = workers.start()
    marker = tmp_path / "crash.marker"
    result = place_order.apply_async(
        args=["crash"], kwargs={"marker": str(marker), "block": "after_commit"}, queue=queue
    )
    workers.wait_for(marker, "blocking")
    first.kill()
    workers.start()

    answer = workers.result(result)

    assert _events(marker) == ["run", "blocking"]
    assert worker_database.orders("crash") == 1
    assert answer["reference"] == "crash"


WAITING_WORKER = {"app": "tests.celery_wait_app", "settings": "tests.celery_wait_settings"}


@worker_test
def test_a_duplicate_waits_for_the_running_attempt_and_returns_its_result(
    workers: Workers, worker_database: WorkerDatabase, queue: str, tmp_path: Path
) -> None:
    """The duplicate's claim times out (``WAIT`` is 1 s; SQLite waits its 5 s timeout)
    again and again while the original holds its transaction (16 s on SQLite, 5 s
    elsewhere: long enough for two timeouts). It is re-sent to wait, more often than
    ``max_retries`` (1) would allow, and ends with the original's stored result."""
    workers.start(**WAITING_WORKER)
    workers.start(**WAITING_WORKER)
    marker = tmp_path / "slow.marker"
    hold = 12 if worker_database.sqlite_file is not None else 5
    arguments = ["slow", hold, str(marker)]
    original = slow_order.apply_async(args=arguments, queue=queue)
    workers.wait_for(marker, "run")
    duplicate = slow_order.apply_async(args=arguments, queue=queue)

    answer = workers.result(duplicate)

    assert answer == workers.result(original)
    assert answer["reference"] == "slow"
    assert _events(marker) == ["run"]  # the body ran once
    assert worker_database.orders("slow") == 1
    assert worker_database.completed_records() == 1
    waits = sum(worker.log.read_text().count("retry: Retry in") for worker in workers.started)
    assert waits > slow_order.max_retries
