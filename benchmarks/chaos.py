"""Chaos suite: duplicates, client timeouts and SIGKILLed workers against real databases.

gunicorn serves ``benchsite`` (4 sync workers) against PostgreSQL or MariaDB. Client
threads send a few thousand "create payment" intents, each 1-4 times (some copies at
once, the rest one after another), through the three transaction modes. Some requests
are slow on purpose and the client timeout is shorter, so clients retry requests that
are still running. Every 0.5-2 s a worker is killed with SIGKILL, preferably one inside
the business transaction or between the external call and finalize. Clients retry an
intent until they get a definitive answer (not 409, not 5xx, not a dropped connection).

Then, for every intent: exactly one payment row, every answer the client received is
byte-identical to the stored response, and for ``atomic=False`` the fake provider saw
one charge (the derived key deduplicated the retries that took over). Per mode, the time
from an intent's first send to its first definitive answer (p50/p95/p99/max), and the
intents never answered: one of their clients gave up at the deadline (``--deadline``).

The suite's own settings (LEASE 4 s above gunicorn's ``--timeout 3``) have killed
attempts taken over within the run. ``--defaults`` runs as a new user's project would:
LEASE 90 s, ``--timeout 30``, client timeouts of 0.1-1 s; there, a retry can only be
answered early if the store sees that the killed attempt is gone, not when its lease
ends.

Commands::

    python benchmarks/chaos.py --ci --database postgres      # a few hundred intents
    python benchmarks/chaos.py --ci --database mariadb
    python benchmarks/chaos.py --database all                # full run: 3,000 intents each

    python benchmarks/chaos.py --ci --control --database postgres   # must find duplicates
    python benchmarks/chaos.py --ci --database all --plot chaos.png  # and draw the run

    python benchmarks/chaos.py --defaults --database postgres --intents 300
    python benchmarks/chaos.py --defaults --database mariadb --session-locks off --lease-fallback

Exit status 1 if any intent was duplicated, lost or answered inconsistently, if any was
never answered (unless ``--lease-fallback``: a run that measures the wait for the lease),
or if a mode's p99 time to an answer exceeds ``--max-p99`` (with ``--control``: if the
checker found no duplicate on the unguarded endpoint).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plots
import serve

DATABASE = "idem_chaos"
MODES = {"two_phase": 0.35, "single": 0.25, "non_atomic": 0.40}
PATHS = {
    "two_phase": "/chaos/two-phase/",
    "single": "/chaos/single/",
    "non_atomic": "/chaos/non-atomic/",
    "unguarded": "/chaos/unguarded/",
}
KILL_WINDOWS = {
    "two_phase:in-transaction",
    "single:in-transaction",
    "unguarded:in-transaction",
    "non_atomic:charged",
    "non_atomic:recorded",
}


# ---------------------------------------------------------------- the fake provider


class Provider:
    """A payment provider that deduplicates charges on the ``Idempotency-Key`` it gets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.charges: dict[str, dict[str, Any]] = {}
        self.lost_answers = 0  # charged, but the caller died before reading the answer
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/charges"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers["Idempotency-Key"]
                with provider.lock:
                    charge = provider.charges.get(key)
                    if charge is None:
                        charge = {"id": f"ch_{len(provider.charges) + 1}", "calls": 0, **body}
                        provider.charges[key] = charge
                    charge["calls"] += 1
                answer = json.dumps({"charge": charge["id"]}).encode()
                try:
                    self.send_response(201)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the worker was killed while waiting for us
                    with provider.lock:
                        provider.lost_answers += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()


# ---------------------------------------------------------------- intents and clients


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str | None
    location: str | None
    replayed: bool


@dataclass
class Intent:
    reference: str
    key: str
    mode: str
    amount: int
    copies: int
    concurrent: int
    answers: list[Answer] = field(default_factory=list)
    unresolved: int = 0  # copies whose client gave up at the deadline
    first_sent: float | None = None  # time.monotonic() of the intent's first request
    first_answered: float | None = None  # ... and of its first definitive answer

    @property
    def seconds_to_answer(self) -> float:
        """From the first send to the first definitive answer; infinite if a client of
        the intent gave up (its wait is past the deadline, however the others fared)."""
        if self.unresolved or self.first_sent is None or self.first_answered is None:
            return math.inf
        return self.first_answered - self.first_sent

    @property
    def body(self) -> bytes:
        return json.dumps({"reference": self.reference, "amount": self.amount}).encode()


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)  # for --plot

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self._add(name, amount)

    def _add(self, name: str, amount: int = 1) -> None:
        """Count ``name``; the caller holds ``lock``."""
        self.counts[name] += amount
        self.events.append((time.monotonic() - self.started, name))


class Client:
    def __init__(self, port: int, options: argparse.Namespace, stats: Stats) -> None:
        self.port = port
        self.options = options
        self.stats = stats

    def send_until_definitive(self, intent: Intent, rng: random.Random) -> None:
        deadline = time.monotonic() + self.options.deadline
        while time.monotonic() < deadline:
            headers = {"Idempotency-Key": intent.key, "Content-Type": "application/json"}
            if rng.random() < self.options.slow:
                window = rng.choice(
                    ["work", "recorded"] if intent.mode == "non_atomic" else ["work"]
                )
                headers["X-Chaos-Sleep"] = f"{window}:{rng.uniform(0.3, 1.6):.2f}"
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=rng.uniform(*self.options.client_timeout)
            )
            with self.stats.lock:
                if intent.first_sent is None:
                    intent.first_sent = time.monotonic()
                self.stats._add("requests")
            try:
                connection.request("POST", PATHS[intent.mode], body=intent.body, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except TimeoutError:
                self.stats.add("client timeouts")
                continue
            except (ConnectionError, http.client.HTTPException, OSError):
                self.stats.add("connection errors")
                time.sleep(rng.uniform(0.02, 0.2))
                continue
            finally:
                connection.close()
            if response.status == 409:
                self.stats.add("409s")
                retry_after = float(response.getheader("Retry-After") or 1)
                time.sleep(min(retry_after, 1.0) * rng.uniform(0.3, 1.0))
                continue
            if response.status >= 500:
                self.stats.add(f"{response.status}s")
                time.sleep(rng.uniform(0.05, 0.3))
                continue
            answer = Answer(
                status=response.status,
                body=body,
                content_type=response.getheader("Content-Type"),
                location=response.getheader("Location"),
                replayed=response.getheader("Idempotent-Replayed") == "true",
            )
            with self.stats.lock:
                if intent.first_answered is None:
                    intent.first_answered = time.monotonic()
                intent.answers.append(answer)
                self.stats._add("replays" if answer.replayed else "first answers")
            return
        with self.stats.lock:
            intent.unresolved += 1

    def run_copy(self, intent: Intent, sequential: int, seed: int) -> None:
        """One copy; the copy that carries ``sequential`` then sends the later ones."""
        rng = random.Random(seed)
        self.send_until_definitive(intent, rng)
        for _ in range(sequential):
            time.sleep(rng.uniform(0, 0.3))
            self.send_until_definitive(intent, rng)


# ---------------------------------------------------------------- the killer


class Killer(threading.Thread):
    """SIGKILLs a gunicorn worker every ``interval`` seconds, preferring one that is
    inside a business transaction or between the external call and finalize."""

    def __init__(
        self, server: serve.Gunicorn, state_dir: Path, interval: tuple[float, float], seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.state_dir = state_dir
        self.interval = interval
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.kills: Counter[str] = Counter()
        self.times: list[tuple[float, str]] = []  # (time.monotonic(), phase), for --plot

    def phase(self, pid: int) -> str:
        try:
            return (self.state_dir / str(pid)).read_text() or "starting"
        except OSError:
            return "starting"

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(*self.interval)):
            pids = self.server.worker_pids()
            if not pids:
                continue
            phases = {pid: self.phase(pid) for pid in pids}
            aimed = [pid for pid, name in phases.items() if name in KILL_WINDOWS]
            pid = self.rng.choice(aimed if aimed and self.rng.random() < 0.75 else pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills[phases[pid]] += 1
            self.times.append((time.monotonic(), phases[pid]))

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


class ConnectionKiller(threading.Thread):
    """Terminates a random server-side database connection of the site every
    ``interval`` seconds: the store fails under a request, mid-transaction or between
    two of its statements (``--kill-connections``)."""

    def __init__(self, kind: str, interval: tuple[float, float], seed: int) -> None:
        super().__init__(daemon=True)
        self.kind = kind
        self.interval = interval
        self.rng = random.Random(seed + 1)
        self.stop_event = threading.Event()
        self.kills = 0

    def run(self) -> None:
        db = serve.connect(self.kind, DATABASE)
        try:
            cursor = db.cursor()
            while not self.stop_event.wait(self.rng.uniform(*self.interval)):
                if self.kind == "postgres":
                    cursor.execute(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        [DATABASE],
                    )
                else:
                    cursor.execute(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = %s AND id <> CONNECTION_ID()",
                        [DATABASE],
                    )
                backends = [row[0] for row in cursor.fetchall()]
                if not backends:
                    continue
                backend = self.rng.choice(backends)
                try:
                    if self.kind == "postgres":
                        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
                    else:
                        cursor.execute(f"KILL {int(backend)}")
                except Exception:
                    continue
                self.kills += 1
        finally:
            db.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


# ---------------------------------------------------------------- checking


def fetch_results(kind: str) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, dict[str, Any]]]:
    db = serve.connect(kind, DATABASE)
    try:
        cursor = db.cursor()
        cursor.execute("SELECT reference, id, charge, mode FROM benchsite_payment")
        payments: dict[str, list[tuple[Any, ...]]] = {}
        for reference, pk, charge, mode in cursor.fetchall():
            payments.setdefault(reference, []).append((pk, charge, mode))
        key = "`key`" if kind == "mariadb" else '"key"'
        cursor.execute(
            f"SELECT {key}, status, response_status, response_headers, response_body, attempts "
            "FROM django_idempotency_record"
        )
        records = {}
        for row in cursor.fetchall():
            headers = row[3] if isinstance(row[3], dict) else json.loads(row[3] or "{}")
            records[row[0]] = {
                "status": row[1],
                "response_status": row[2],
                "headers": headers,
                "body": bytes(row[4]) if row[4] is not None else None,
                "attempts": row[5],
            }
        return payments, records
    finally:
        db.close()


def check(
    intents: list[Intent],
    payments: dict[str, list[tuple[Any, ...]]],
    records: dict[str, dict[str, Any]],
    provider: Provider,
) -> dict[str, Any]:
    problems: list[str] = []
    duplicates = lost = mismatched = never_answered = 0
    charges_by_reference: dict[str, list[dict[str, Any]]] = {}
    for charge in provider.charges.values():
        charges_by_reference.setdefault(charge["reference"], []).append(charge)
    for intent in intents:
        rows = payments.get(intent.reference, [])
        record = records.get(intent.key)
        if len(rows) > 1:
            duplicates += 1
            problems.append(f"{intent.reference} ({intent.mode}): {len(rows)} payments {rows}")
        if intent.mode == "unguarded":
            continue
        if intent.unresolved:
            # A client gave up: rows and record may rightly be missing (an attempt still
            # in its lease at the end); duplicates and any answers are still checked.
            never_answered += 1
            problems.append(
                f"{intent.reference} ({intent.mode}): never answered, {intent.unresolved} "
                f"client(s) gave up; rows={len(rows)} answers={len(intent.answers)} "
                f"record={record and record['status']}"
            )
            if not rows or record is None:
                charges = charges_by_reference.get(intent.reference, [])
                if intent.mode == "non_atomic" and len(charges) > 1:
                    duplicates += 1
                    problems.append(f"{intent.reference}: provider charged {len(charges)} times")
                continue
        elif not rows or not intent.answers or record is None:
            lost += 1
            problems.append(
                f"{intent.reference} ({intent.mode}): rows={len(rows)} "
                f"answers={len(intent.answers)} unresolved={intent.unresolved} record={record}"
            )
            continue
        if intent.mode == "non_atomic":
            charges = charges_by_reference.get(intent.reference, [])
            if len(charges) != 1:
                duplicates += 1
                problems.append(f"{intent.reference}: provider charged {len(charges)} times")
            elif rows[0][1] != charges[0]["id"]:
                mismatched += 1
                problems.append(f"{intent.reference}: payment {rows[0]} is not {charges[0]}")
        stored_type = record["headers"].get("Content-Type")
        stored_location = record["headers"].get("Location")
        for answer in intent.answers:
            same = (
                record["status"] == "completed"
                and answer.status == record["response_status"]
                and answer.body == record["body"]
                and answer.content_type == stored_type
                and answer.location == stored_location
                and json.loads(answer.body)["payment"] == rows[0][0]
            )
            if not same:
                mismatched += 1
                problems.append(f"{intent.reference}: answer {answer} differs from stored {record}")
                break
    left_in_progress = sum(1 for record in records.values() if record["status"] != "completed")
    return {
        "duplicates": duplicates,
        "lost": lost,
        "mismatched": mismatched,
        "never answered": never_answered,
        "left in progress": left_in_progress,
        "take-overs": sum(record["attempts"] - 1 for record in records.values()),
        "taken-over operations": sum(1 for record in records.values() if record["attempts"] > 1),
        "problems": problems,
    }


# ---------------------------------------------------------------- one run


def make_intents(count: int, rng: random.Random, control: bool) -> list[Intent]:
    intents = []
    run = uuid.uuid4().hex[:8]
    for number in range(count):
        copies = rng.choice([1, 2, 2, 3, 3, 4])
        intents.append(
            Intent(
                reference=f"{run}-{number}",
                key=str(uuid.uuid4()),
                mode="unguarded"
                if control
                else rng.choices(list(MODES), weights=list(MODES.values()))[0],
                amount=rng.randint(1, 10_000),
                copies=copies,
                concurrent=rng.randint(1, copies),
            )
        )
    return intents


def run(kind: str, options: argparse.Namespace, drawn: list[plots.ChaosRun]) -> bool:
    rng = random.Random(options.seed)
    serve.recreate_database(kind, DATABASE)
    url = serve.database_url(kind, DATABASE)
    serve.migrate(url)
    if options.pooler:
        # The site talks to the pooler; creating, migrating and checking stay direct.
        url = serve.POOLED_URL.format(name=DATABASE)
    state_dir = Path(tempfile.mkdtemp(prefix="chaos-state-"))
    log = Path(tempfile.gettempdir()) / f"chaos-gunicorn-{kind}.log"
    provider = Provider()
    server = serve.Gunicorn(
        url,
        workers=options.workers,
        timeout=options.worker_timeout,
        log=log,
        env={
            "BENCH_LEASE": str(options.lease),
            "BENCH_WAIT": str(options.wait),
            "CHAOS_STATE_DIR": str(state_dir),
            "CHAOS_PROVIDER_URL": provider.url,
            "BENCH_SESSION_LOCKS": options.session_locks or "",  # "": the setting's default
            "BENCH_POOLER": "transaction" if options.pooler else "",
        },
    )
    intents = make_intents(options.intents, rng, options.control)
    stats = Stats()
    client = Client(server.port, options, stats)
    killer = Killer(server, state_dir, options.kill_every, options.seed)
    connection_killer = (
        ConnectionKiller(kind, options.kill_connections, options.seed)
        if options.kill_connections
        else None
    )
    started = stats.started = time.monotonic()
    try:
        killer.start()
        if connection_killer:
            connection_killer.start()
        with ThreadPoolExecutor(max_workers=options.threads) as pool:
            for intent in intents:
                for copy in range(intent.concurrent):
                    sequential = intent.copies - intent.concurrent if copy == 0 else 0
                    pool.submit(client.run_copy, intent, sequential, rng.getrandbits(32))
        killer.stop()
        if connection_killer:
            connection_killer.stop()
    finally:
        if killer.is_alive():
            killer.stop()
        if connection_killer and connection_killer.is_alive():
            connection_killer.stop()
        server.stop()
        provider.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    payments, records = fetch_results(kind)
    result = check(intents, payments, records, provider)
    times = answer_times(intents)
    report(kind, intents, stats, killer, provider, result, elapsed, log)
    report_times(times, options)
    if connection_killer:
        print(f"DB connections killed {connection_killer.kills}")
    drawn.append(summary(kind, stats, killer, result, started, elapsed, len(intents)))
    if options.control:
        print(
            "control: the unguarded endpoint must show duplicates; it did"
            if result["duplicates"]
            else "control: FAILED, the checker saw no duplicate without a guard"
        )
        return bool(result["duplicates"])
    slow = [
        mode
        for mode, figures in times.items()
        if options.max_p99 is not None and figures["p99"] > options.max_p99
    ]
    if slow:
        print(f"p99 time to an answer over --max-p99 {options.max_p99:g} s: {', '.join(slow)}")
    return not (
        result["duplicates"]
        or result["lost"]
        or result["mismatched"]
        or (result["never answered"] and not options.lease_fallback)
        or slow
    )


def percentile(ordered: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of them at or below it."""
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


def answer_times(intents: list[Intent]) -> dict[str, dict[str, float]]:
    """Per mode (and over all guarded modes), the seconds from an intent's first send to
    its first definitive answer; an intent never answered counts as infinitely slow."""
    by_mode: dict[str, list[float]] = {}
    for intent in intents:
        by_mode.setdefault(intent.mode, []).append(intent.seconds_to_answer)
    guarded = [t for mode, times in by_mode.items() if mode != "unguarded" for t in times]
    if len(by_mode) > 1 and guarded:
        by_mode["all"] = guarded
    figures = {}
    for mode in [*MODES, "unguarded", "all"]:
        if mode not in by_mode:
            continue
        ordered = sorted(by_mode[mode])
        figures[mode] = {
            "intents": len(ordered),
            "p50": percentile(ordered, 0.50),
            "p95": percentile(ordered, 0.95),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1],
            "never answered": sum(1 for t in ordered if math.isinf(t)),
        }
    return figures


def report_times(times: dict[str, dict[str, float]], options: argparse.Namespace) -> None:
    def seconds(value: float) -> str:
        return f"> {options.deadline:g}" if math.isinf(value) else f"{value:.2f}"

    print(
        f"time to a definitive answer, per intent (first send -> first definitive answer, "
        f"s; never answered: a client gave up after {options.deadline:g} s):"
    )
    print(f"  {'mode':<11} {'intents':>7} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  never")
    for mode, figures in times.items():
        print(
            f"  {mode:<11} {figures['intents']:>7}"
            + "".join(f" {seconds(figures[name]):>8}" for name in ("p50", "p95", "p99", "max"))
            + f"  {figures['never answered']:>5}"
        )
    never = sum(figures["never answered"] for mode, figures in times.items() if mode != "all")
    verdict = "measured: --lease-fallback" if options.lease_fallback else "must be 0"
    print(f"never answered     {never}  ({verdict})")


def summary(
    kind: str,
    stats: Stats,
    killer: Killer,
    result: dict[str, Any],
    started: float,
    elapsed: float,
    intents: int,
) -> plots.ChaosRun:
    counts = stats.counts
    totals = {
        "intents": intents,
        "requests": counts["requests"],
        "kills": sum(killer.kills.values()),
        "409s": counts["409s"],
        "5xx": sum(n for name, n in counts.items() if name[0] == "5"),
        "first answers": counts["first answers"],
        "replays": counts["replays"],
        "take-overs": result["take-overs"],
        "duplicates": result["duplicates"],
        "lost": result["lost"],
        "mismatched": result["mismatched"],
        "never answered": result["never answered"],
    }
    kills = [(at - started, phase) for at, phase in killer.times]
    return plots.ChaosRun(kind, elapsed, list(stats.events), kills, totals)


def report(
    kind: str,
    intents: list[Intent],
    stats: Stats,
    killer: Killer,
    provider: Provider,
    result: dict[str, Any],
    elapsed: float,
    log: Path,
) -> None:
    counts = stats.counts
    modes = Counter(intent.mode for intent in intents)
    worker_timeouts = log.read_text().count("WORKER TIMEOUT")
    non_atomic = modes["non_atomic"]
    calls = sum(charge["calls"] for charge in provider.charges.values())
    print(f"\n== chaos on {kind}: {elapsed:.0f} s ==")
    print(f"intents            {len(intents)}  ({', '.join(f'{m} {n}' for m, n in modes.items())})")
    print(f"copies sent        {sum(intent.copies for intent in intents)}")
    print(f"requests sent      {counts['requests']}")
    print(f"kills (SIGKILL)    {sum(killer.kills.values())}  by phase: {dict(killer.kills)}")
    print(f"worker timeouts    {worker_timeouts}  (gunicorn's own kills)")
    print(f"client timeouts    {counts['client timeouts']}")
    print(f"connection errors  {counts['connection errors']}")
    print(f"409s               {counts['409s']}")
    errors = {name: n for name, n in sorted(counts.items()) if name[0] == "5"}
    print(f"5xx                {sum(errors.values())}  {errors or ''}")
    print(f"first answers      {counts['first answers']}")
    print(f"replays            {counts['replays']}")
    print(
        f"take-overs         {result['take-overs']}  "
        f"(on {result['taken-over operations']} operations)"
    )
    print(
        f"provider           {non_atomic} atomic=False intents -> {len(provider.charges)} "
        f"charges, {calls} calls ({calls - len(provider.charges)} deduplicated by derived key; "
        f"{provider.lost_answers} answers lost with a killed worker)"
    )
    print(f"left in progress   {result['left in progress']}")
    print(f"mismatched answers {result['mismatched']}  (must be 0)")
    print(f"duplicates         {result['duplicates']}  (must be 0)")
    print(f"lost               {result['lost']}  (must be 0)")
    for problem in result["problems"][:20]:
        print("  !", problem)


def main() -> int:
    global DATABASE  # --db-name: every function of the run reads it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["postgres", "mariadb", "all"], default="all")
    parser.add_argument("--ci", action="store_true", help="a short run: 300 intents")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="as a new user's project: LEASE 90 s, gunicorn --timeout 30, client timeouts "
        "of 0.1-1 s, 1,000 intents (the options below still override each)",
    )
    parser.add_argument(
        "--intents", type=int, default=None, help="default 3,000; --defaults 1,000; --ci 300"
    )
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--lease", type=float, default=None, help="LEASE in seconds (4; --defaults 90)"
    )
    parser.add_argument(
        "--worker-timeout",
        type=int,
        default=None,
        help="gunicorn --timeout, below LEASE (3; --defaults 30)",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        nargs="+",
        default=None,
        metavar="SECONDS",
        help="one value, or MIN MAX to draw each request's from (1; --defaults 0.1 1)",
    )
    parser.add_argument(
        "--pooler",
        action="store_true",
        help="PostgreSQL through the transaction-pooling PgBouncer on 127.0.0.1:6432 "
        "(./scripts/pgbouncer starts it)",
    )
    parser.add_argument(
        "--session-locks",
        choices=["auto", "on", "off"],
        default=None,
        help='IDEMPOTENCY["SESSION_LOCKS"] (BENCH_SESSION_LOCKS); unset: the default',
    )
    parser.add_argument("--wait", type=float, default=0.0, help="IDEMPOTENCY WAIT in seconds")
    parser.add_argument("--slow", type=float, default=0.08, help="share of slow requests")
    parser.add_argument(
        "--kill-every", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--kill-connections",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="also terminate a random database connection of the site every MIN-MAX s",
    )
    parser.add_argument(
        "--deadline",
        "--intent-deadline",
        type=float,
        default=120.0,
        help="seconds a client retries a copy before it gives up: never answered",
    )
    parser.add_argument(
        "--lease-fallback",
        action="store_true",
        help="a measurement of the wait for the lease: never-answered intents are "
        "reported, not failed",
    )
    parser.add_argument(
        "--max-p99",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail if a mode's p99 time to a definitive answer exceeds this",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--db-name",
        default=DATABASE,
        help=f"the database the run drops and creates (default {DATABASE})",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH.png",
        default=None,
        help="also draw the run as a PNG (needs matplotlib: the benchmark extra)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="negative control: the same load on an unguarded endpoint must show duplicates",
    )
    options = parser.parse_args()
    plot = plots.plot_path(parser, options.plot)
    if not options.db_name.isidentifier():
        parser.error(f"--db-name {options.db_name!r}: letters, digits and _ only")
    DATABASE = options.db_name
    if options.intents is None:
        options.intents = 300 if options.ci else 1000 if options.defaults else 3000
    if options.lease is None:
        options.lease = 90.0 if options.defaults else 4.0
    if options.worker_timeout is None:
        options.worker_timeout = 30 if options.defaults else 3
    if options.client_timeout is None:
        options.client_timeout = [0.1, 1.0] if options.defaults else [1.0]
    if len(options.client_timeout) > 2:
        parser.error("--client-timeout takes one value or MIN MAX")
    options.client_timeout = (options.client_timeout[0], options.client_timeout[-1])
    if options.seed is None:
        options.seed = random.randrange(1 << 30)
    if options.lease <= options.worker_timeout:
        parser.error("--lease must exceed --worker-timeout (DESIGN.md: LEASE > worker timeout)")
    low, high = options.client_timeout
    print(
        f"seed {options.seed}; {options.intents} intents, {options.threads} clients, "
        f"LEASE {options.lease:g} s, gunicorn --timeout {options.worker_timeout}, client "
        f"timeout {low:g}-{high:g} s, kills every {options.kill_every[0]:g}-"
        f"{options.kill_every[1]:g} s, deadline {options.deadline:g} s, session locks "
        f"{options.session_locks or 'the default'}"
    )
    kinds = ["postgres", "mariadb"] if options.database == "all" else [options.database]
    drawn: list[plots.ChaosRun] = []
    results = [run(kind, options, drawn) for kind in kinds]
    if plot is not None:
        label = "control, unguarded endpoint" if options.control else f"{options.intents} intents"
        low, high = options.client_timeout
        caption = (
            f"{label}, {options.threads} client threads, gunicorn {options.workers} sync "
            f"workers, --timeout {options.worker_timeout}, LEASE {options.lease:g} s, client "
            f"timeout {low:g}" + (f"-{high:g}" if high != low else "") + " s, a worker "
            f"SIGKILLed every {options.kill_every[0]:g}-{options.kill_every[1]:g} s, "
            f"seed {options.seed}"
        )
        plots.chaos(drawn, caption, plot)
        print(f"plot written to {plot}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
