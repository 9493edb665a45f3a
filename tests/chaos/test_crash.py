"""Real crashes, aimed: SIGKILL a gunicorn worker at a chosen point of a request.

Each test starts one request that pauses at a window (``X-Chaos-Sleep``), kills its
worker there, then retries like a client would, and checks what the database and the
fake payment provider saw. The full randomised run is ``benchmarks/chaos.py``.

Opt-in (they start gunicorn and recreate the ``idem_chaos`` database)::

    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/idem_f
    CHAOS_TESTS=1 .venv/bin/pytest tests/chaos
    CHAOS_TESTS=1 DATABASE_URL=mysql://root@127.0.0.1:3306/idem_f .venv/bin/pytest tests/chaos
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import chaos  # noqa: E402
import serve  # noqa: E402

URL = os.environ.get("DATABASE_URL", "")
KIND = "postgres" if URL.startswith("postgres") else "mariadb" if URL.startswith("mysql") else ""
LEASE = 4

pytestmark = [
    pytest.mark.skipif(not os.environ.get("CHAOS_TESTS"), reason="opt-in: set CHAOS_TESTS=1"),
    pytest.mark.skipif(not KIND, reason="needs PostgreSQL or MariaDB (DATABASE_URL)"),
    pytest.mark.skipif(shutil.which("gunicorn", path=str(serve.BIN)) is None, reason="gunicorn"),
]


@dataclass
class Site:
    server: serve.Gunicorn
    provider: chaos.Provider
    state: Path

    def post(self, mode: str, key: str, body: dict[str, Any], sleep: str = "") -> Any:
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        if sleep:
            headers["X-Chaos-Sleep"] = sleep
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            connection.request("POST", chaos.PATHS[mode], json.dumps(body), headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def worker_in(self, phase: str, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in self.server.worker_pids():
                try:
                    if (self.state / str(pid)).read_text() == phase:
                        return pid
                except OSError:
                    continue
            time.sleep(0.01)
        raise AssertionError(f"no worker reached {phase}")

    def until_definitive(self, mode: str, key: str, body: dict[str, Any]) -> Any:
        """Retry like a client: after 409 wait (at most Retry-After), until an answer."""
        conflicts = 0
        deadline = time.monotonic() + LEASE * 4
        while time.monotonic() < deadline:
            status, headers, content = self.post(mode, key, body)
            if status != 409:
                return status, headers, content, conflicts
            conflicts += 1
            time.sleep(min(float(headers.get("Retry-After", 1)), 0.5))
        raise AssertionError("no definitive answer")

    def payments(self, reference: str) -> list[tuple[Any, ...]]:
        return self._query(
            "SELECT id, charge, operation FROM benchsite_payment WHERE reference = %s",
            reference,
        )

    def record(self, key: str) -> tuple[Any, ...]:
        quoted = "`key`" if KIND == "mariadb" else '"key"'
        rows = self._query(
            f"SELECT status, attempts, recovery_point, response_body "
            f"FROM django_idempotency_record WHERE {quoted} = %s",
            key,
        )
        assert len(rows) == 1
        return rows[0]

    #: The database the site's server writes to.
    database: ClassVar[str] = chaos.DATABASE

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        db = serve.connect(KIND, self.database)
        try:
            cursor = db.cursor()
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            db.close()

    def charges(self, reference: str) -> list[dict[str, Any]]:
        return [c for c in self.provider.charges.values() if c["reference"] == reference]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    serve.recreate_database(KIND, chaos.DATABASE)
    url = serve.database_url(KIND, chaos.DATABASE)
    serve.migrate(url)
    state = Path(tempfile.mkdtemp(prefix="crash-state-"))
    provider = chaos.Provider()
    server = serve.Gunicorn(
        url,
        workers=2,
        timeout=LEASE - 1,
        log=Path(tempfile.gettempdir()) / f"crash-gunicorn-{KIND}.log",
        env={
            "BENCH_LEASE": str(LEASE),
            "CHAOS_STATE_DIR": str(state),
            "CHAOS_PROVIDER_URL": provider.url,
        },
    )
    try:
        yield Site(server, provider, state)
    finally:
        server.stop()
        provider.stop()
        shutil.rmtree(state, ignore_errors=True)


def crash(site: Site, mode: str, window: str, phase: str) -> tuple[str, dict[str, Any]]:
    """Send one request that pauses at ``window``, SIGKILL its worker in ``phase``."""
    key = str(uuid.uuid4())
    body = {"reference": f"crash-{uuid.uuid4().hex[:8]}", "amount": 42}
    outcome: list[Any] = []

    def first() -> None:
        try:
            outcome.append(site.post(mode, key, body, sleep=f"{window}:30"))
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    os.kill(site.worker_in(phase), signal.SIGKILL)
    thread.join()
    assert isinstance(outcome[0], Exception), outcome  # the client saw a dropped connection
    return key, body


def test_atomic_false_killed_after_the_charge_is_taken_over_and_charged_once(site: Site) -> None:
    key, body = crash(site, "non_atomic", "work", "non_atomic:charged")
    status, _, content, conflicts = site.until_definitive("non_atomic", key, body)
    assert conflicts >= 1  # the dead attempt's lease held the key until it ran out
    assert status == 201
    answer = json.loads(content)
    assert answer["attempt"] == 2
    charges = site.charges(body["reference"])
    assert len(charges) == 1, charges  # the derived key reached the provider twice...
    assert charges[0]["calls"] == 2  # ...and it deduplicated the second charge
    assert answer["charge"] == charges[0]["id"]
    assert len(site.payments(body["reference"])) == 1
    assert site.record(key)[:2] == ("completed", 2)
    replay = site.post("non_atomic", key, body)
    assert (replay[0], replay[2]) == (201, content)
    assert replay[1]["Idempotent-Replayed"] == "true"


def test_atomic_false_killed_after_its_checkpoint_reuses_the_payment(site: Site) -> None:
    key, body = crash(site, "non_atomic", "recorded", "non_atomic:recorded")
    payments = site.payments(body["reference"])
    assert len(payments) == 1  # committed with the checkpoint, before the crash
    status, _, content, _ = site.until_definitive("non_atomic", key, body)
    assert status == 201
    answer = json.loads(content)
    assert answer["attempt"] == 2
    assert answer["payment"] == payments[0][0]
    assert site.payments(body["reference"]) == payments
    charges = site.charges(body["reference"])
    assert len(charges) == 1 and charges[0]["calls"] == 1  # resumed past the charge
    assert site.record(key)[:3] == ("completed", 2, "recorded")


def test_two_phase_killed_inside_the_transaction_rolls_back_and_is_taken_over(
    site: Site,
) -> None:
    key, body = crash(site, "two_phase", "work", "two_phase:in-transaction")
    assert site.payments(body["reference"]) == []  # the transaction died with the worker
    status, _, content, conflicts = site.until_definitive("two_phase", key, body)
    assert conflicts >= 1
    assert status == 201
    assert json.loads(content)["attempt"] == 2
    assert len(site.payments(body["reference"])) == 1
    assert site.record(key)[:2] == ("completed", 2)


def test_single_transaction_killed_leaves_nothing_and_the_retry_runs_at_once(
    site: Site,
) -> None:
    key, body = crash(site, "single", "work", "single:in-transaction")
    assert site.payments(body["reference"]) == []
    status, _, content, conflicts = site.until_definitive("single", key, body)
    assert conflicts == 0  # the claim rolled back with the work: no lease to wait for
    assert status == 201
    assert json.loads(content)["attempt"] == 1
    assert len(site.payments(body["reference"])) == 1
    assert site.record(key)[:2] == ("completed", 1)
