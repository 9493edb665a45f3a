"""Graceful stops, aimed: gunicorn's own signals reach a worker inside a guarded view.

A deploy stops workers with signals, not SIGKILL: SIGTERM to a worker (finish the request,
then exit), SIGHUP to the master (new workers, the old ones finish and exit), SIGTERM to
the master (every worker finishes within ``--graceful-timeout``, then is SIGKILLed), and
SIGINT / SIGQUIT (quick shutdown: ``SystemExit`` raised inside the request). After each,
every key must answer a retry at once (a replay of the first answer, or a run), never a
409 that lasts a lease, and no intent may run twice. ``LEASE`` is long (20 s) so that a
key left blocked shows as a failure, not as a slow pass.

Opt-in like ``test_crash.py``, whose helpers this reuses; the database is
``<DATABASE_URL's name>_graceful``, recreated for the module::

    CHAOS_TESTS=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/idem_f \\
        .venv/bin/pytest tests/chaos/test_graceful_stop.py
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import pytest

from tests.chaos import test_crash
from tests.chaos.test_crash import KIND, URL, chaos, serve

pytestmark = test_crash.pytestmark

DATABASE = f"{urlparse(URL).path.strip('/') or 'idem'}_graceful"
LEASE = 20
VIEW = 1.5  # how long a view sleeps inside its work, well below GRACE
GRACE = 5  # gunicorn's --graceful-timeout, but for the case that outlasts it
SOON = 2.5  # how long a retry may take to get a definitive answer
MODES = ["two_phase", "single", "non_atomic"]
IN_VIEW = {
    "two_phase": "two_phase:in-transaction",
    "single": "single:in-transaction",
    "non_atomic": "non_atomic:charged",
}
DROPPED = (ConnectionError, http.client.HTTPException, OSError)


@dataclass
class Site(test_crash.Site):
    """``test_crash.Site`` on this module's database, with a server it can replace."""

    log: Path

    database: ClassVar[str] = DATABASE

    def start(self, graceful_timeout: int = GRACE) -> None:
        self.server = start_gunicorn(self.state, self.provider, self.log, graceful_timeout)

    def in_view(self, *requests: Request, timeout: float = 15) -> set[int]:
        """Wait until ``requests`` keep as many workers inside a view's work (at most
        four: the others queue); the workers' pids."""
        count = min(len(requests), 4)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = [r.outcome for r in requests if r.thread and not r.thread.is_alive()]
            if ended:  # an answer before the signal: the view failed, see the log
                raise AssertionError(f"answered before the signal: {ended}; {self.log}")
            busy = set()
            for pid in self.server.worker_pids():
                try:
                    if (self.state / str(pid)).read_text() in IN_VIEW.values():
                        busy.add(pid)
                except OSError:
                    continue
            if len(busy) >= count:
                return busy
            time.sleep(0.01)
        raise AssertionError(f"fewer than {count} workers reached a view; {self.log}")

    def answer_soon(self, mode: str, key: str, body: dict[str, Any]) -> Any:
        """Retry like a client for ``SOON`` seconds; a key still refused then is blocked."""
        conflicts = 0
        last: Any = None
        deadline = time.monotonic() + SOON
        while time.monotonic() < deadline:
            try:
                status, headers, content = self.post(mode, key, body)
            except DROPPED as exc:  # a server that is still starting
                last = exc
                time.sleep(0.05)
                continue
            if status != 409:
                return status, headers, content, conflicts
            conflicts += 1
            last = (status, headers.get("Retry-After"), content[:200])
            time.sleep(0.2)
        raise AssertionError(f"{mode}: no definitive answer within {SOON} s, last: {last}")

    def wait_gone(self, pids: set[int], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pids & set(self.server.worker_pids()):
                return
            time.sleep(0.05)
        raise AssertionError(f"workers {pids} did not exit")


def start_gunicorn(
    state: Path, provider: chaos.Provider, log: Path, graceful_timeout: int = GRACE
) -> serve.Gunicorn:
    return serve.Gunicorn(
        serve.database_url(KIND, DATABASE),
        workers=4,
        timeout=LEASE / 2,
        graceful_timeout=graceful_timeout,
        log=log,
        env={
            "BENCH_LEASE": str(LEASE),
            "CHAOS_STATE_DIR": str(state),
            "CHAOS_PROVIDER_URL": provider.url,
        },
    )


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    serve.recreate_database(KIND, DATABASE)
    serve.migrate(serve.database_url(KIND, DATABASE))
    state = Path(tempfile.mkdtemp(prefix="graceful-state-"))
    provider = chaos.Provider()
    log = Path(tempfile.gettempdir()) / f"graceful-gunicorn-{KIND}.log"
    server = start_gunicorn(state, provider, log)
    site = Site(server, provider, state, log)
    try:
        yield site
    finally:
        site.server.stop()
        provider.stop()
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Request:
    mode: str
    key: str
    body: dict[str, Any]
    outcome: Any = None
    thread: threading.Thread | None = None

    def join(self) -> Any:
        assert self.thread is not None
        self.thread.join()
        return self.outcome


def send(site: Site, mode: str, seconds: float = VIEW) -> Request:
    """Start one guarded request whose view sleeps ``seconds`` inside its work."""
    request = Request(
        mode, str(uuid.uuid4()), {"reference": f"stop-{uuid.uuid4().hex[:8]}", "amount": 7}
    )

    def run() -> None:
        try:
            request.outcome = site.post(mode, request.key, request.body, sleep=f"work:{seconds}")
        except DROPPED as exc:
            request.outcome = exc

    request.thread = threading.Thread(target=run)
    request.thread.start()
    return request


def ran_once(site: Site, request: Request, attempts: int = 1, calls: int = 1) -> None:
    """One payment; ``attempts`` attempts on the record; for ``atomic=False`` one charge
    that reached the provider ``calls`` times (the derived key deduplicated the rest)."""
    assert len(site.payments(request.body["reference"])) == 1
    assert site.record(request.key)[:2] == ("completed", attempts)
    if request.mode == "non_atomic":
        charges = site.charges(request.body["reference"])
        assert len(charges) == 1, charges
        assert charges[0]["calls"] == calls


def replays(site: Site, request: Request, content: bytes) -> None:
    status, headers, again, conflicts = site.answer_soon(request.mode, request.key, request.body)
    assert (status, again, conflicts) == (201, content, 0)
    assert headers["Idempotent-Replayed"] == "true"


# ---------------------------------------------------------------- (a) SIGTERM to a worker


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_to_a_worker_lets_its_request_finish(site: Site, mode: str) -> None:
    request = send(site, mode)
    (pid,) = site.in_view(request)
    os.kill(pid, signal.SIGTERM)
    status, _, content = request.join()
    assert status == 201
    assert json.loads(content)["attempt"] == 1
    site.wait_gone({pid})  # it did stop, after the request
    replays(site, request, content)
    ran_once(site, request)


# ---------------------------------------------------------------- (d) quick shutdown


@pytest.mark.parametrize("signum", [signal.SIGQUIT, signal.SIGINT], ids=["SIGQUIT", "SIGINT"])
@pytest.mark.parametrize("mode", MODES)
def test_quick_shutdown_of_a_worker_undoes_its_attempt(
    site: Site, mode: str, signum: signal.Signals
) -> None:
    """gunicorn's worker raises ``SystemExit`` in the view; the guard undoes the attempt
    (releases it, rolls it back, or for ``atomic=False`` ends its lease) on the way out."""
    request = send(site, mode, seconds=10)
    (pid,) = site.in_view(request)
    os.kill(pid, signum)
    first = request.join()
    # gunicorn answers the SystemExit with its own 500 (or the connection drops).
    assert isinstance(first, Exception) or first[0] == 500, first
    site.wait_gone({pid})
    status, _, content, conflicts = site.answer_soon(mode, request.key, request.body)
    assert (status, conflicts) == (201, 0)
    again = 2 if mode == "non_atomic" else 1  # the same operation, continued
    assert json.loads(content)["attempt"] == again
    ran_once(site, request, attempts=again, calls=2)


# ---------------------------------------------------------------- (b) deploys


def in_flight(site: Site) -> list[Request]:
    """Two requests per mode: four inside the four workers' views, two queued."""
    requests = [send(site, mode) for mode in MODES for _ in range(2)]
    site.in_view(*requests)
    return requests


def test_a_reload_finishes_every_request_in_flight(site: Site) -> None:
    requests = in_flight(site)
    old = set(site.server.worker_pids())
    site.server.process.send_signal(signal.SIGHUP)
    answers = [request.join() for request in requests]
    assert [status for status, _, _ in answers] == [201] * len(requests)
    site.wait_gone(old)
    for request, (_, _, content) in zip(requests, answers, strict=True):
        assert json.loads(content)["attempt"] == 1
        replays(site, request, content)
        ran_once(site, request)


def test_a_stop_and_a_fresh_start_leave_no_key_blocked(site: Site) -> None:
    """Requests inside a view finish within the grace; queued ones are dropped unrun."""
    requests = in_flight(site)
    site.server.process.send_signal(signal.SIGTERM)
    answers = [request.join() for request in requests]
    site.server.process.wait(timeout=15)
    site.server.stop()
    site.start()
    finished = 0
    for request, first in zip(requests, answers, strict=True):
        status, _, content, conflicts = site.answer_soon(request.mode, request.key, request.body)
        assert (status, conflicts) == (201, 0)
        if isinstance(first, Exception):
            assert json.loads(content)["attempt"] == 1
        else:
            finished += 1
            assert first[0] == 201 and first[2] == content
        ran_once(site, request)
    assert finished >= 4  # every request that was inside a view


# ---------------------------------------------------------------- (c) killed after the grace


@pytest.fixture(scope="module")
def killed_after_grace(site: Site) -> dict[str, Request]:
    """One request per mode whose view outlasts a 1 s ``--graceful-timeout``: gunicorn
    SIGKILLs the workers after the grace, then a fresh gunicorn starts."""
    site.server.stop()
    site.start(graceful_timeout=1)
    requests = {mode: send(site, mode, seconds=10) for mode in MODES}
    site.in_view(*requests.values())
    site.server.process.send_signal(signal.SIGTERM)
    for request in requests.values():
        assert isinstance(request.join(), Exception)  # the client saw a dropped connection
    site.server.process.wait(timeout=15)
    site.server.stop()
    site.start()
    return requests


@pytest.mark.parametrize("mode", MODES)
def test_an_attempt_killed_after_the_grace_is_taken_over_at_once(
    site: Site, killed_after_grace: dict[str, Request], mode: str
) -> None:
    request = killed_after_grace[mode]
    status, _, content, _ = site.answer_soon(mode, request.key, request.body)
    assert status == 201
    again = 1 if mode == "single" else 2  # single's claim rolled back with the worker
    assert json.loads(content)["attempt"] == again
    ran_once(site, request, attempts=again, calls=2)
