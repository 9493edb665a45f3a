"""Overhead benchmark: what the guard costs per mode, against the bare view and the floor.

gunicorn (4 sync workers, persistent connections) serves ``benchsite`` against
PostgreSQL on loopback; wrk, in its own process, drives one endpoint at a time with a
Lua script that sends a unique ``Idempotency-Key`` per request (or, for replays, cycles
through keys completed beforehand). Phases are interleaved and repeated, so drift in
the machine's load hits every mode alike. Each mode is compared with:

- the **bare** view (the same create-order view, unguarded), and
- its **floor**: the bare view plus, as raw SQL, the fewest statements a correct guard
  must run (claim INSERT + fenced finalize UPDATE; one SELECT for a replay).

The statements each mode adds are counted with ``connection.execute_wrapper`` on one
in-process request per mode. Targets: two-phase >= 0.6 of bare, single-transaction >=
0.7, replay >= 1.5, each >= 0.9 of its floor.

Two more phases measure ``ENCRYPTION_KEYS`` (``/encrypted/``: the two-phase view with
a key set for its requests): a first request and a replay, each reported against the
same phase without encryption, in the same rotations.

Needs wrk (``apt-get install -y wrk``) and gunicorn (``pip install gunicorn``)::

    python benchmarks/overhead.py                       # 3 rotations x 10 s per phase
    python benchmarks/overhead.py --seconds 3           # a quick check of the script
    python benchmarks/overhead.py --plot overhead.png   # and draw the figures

Run it on a quiet machine: with 2 cores, everything else running skews every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plots
import serve

DATABASE = "idem_bench"
BODY = '{"reference": "bench", "amount": 1}'
REPLAY_KEYS = 200

# phase name -> (path, key kind)
PHASES = {
    "bare": ("/bare/", "none"),
    "two-phase": ("/two-phase/", "unique"),
    "floor two-phase": ("/floor/two-phase/", "unique"),
    "single": ("/single/", "unique"),
    "floor single": ("/floor/single/", "unique"),
    "non-atomic": ("/non-atomic/", "unique"),
    "floor non-atomic": ("/floor/non-atomic/", "unique"),
    "replay": ("/two-phase/", "replay"),
    "floor replay": ("/floor/replay/", "replay"),
    "encrypted": ("/encrypted/", "unique"),
    "encrypted replay": ("/encrypted/", "replay"),
    "cached": ("/cached/", "unique"),
    "cached replay": ("/cached/", "replay"),
}
MODES = ["two-phase", "single", "non-atomic", "replay"]
# encrypted phase -> the same phase without encryption
ENCRYPTED = {"encrypted": "two-phase", "encrypted replay": "replay"}
# The completed keys replays cycle through, per guarded path (one key: one route).
REPLAY_PREFIX = {
    "/two-phase/": "replay-",
    "/floor/replay/": "replay-",
    "/encrypted/": "enc-",
    "/cached/": "cached-",
}
# replay-cache phase -> the same phase without REPLAY_CACHE
CACHED = {"cached": "two-phase", "cached replay": "replay"}
CACHED_TARGETS = {"cached replay": ("rps/bare", 1.3), "cached": ("rps/plain", 0.97)}
TARGETS = {"two-phase": 0.6, "single": 0.7, "replay": 1.5}
FLOOR_TARGET = 0.9

LUA = """
local counter = 0
local prefix = os.getenv("WRK_PREFIX")
local kind = os.getenv("WRK_KEYS")
local replay_keys = tonumber(os.getenv("WRK_REPLAY_KEYS"))
local replay_prefix = os.getenv("WRK_REPLAY_PREFIX")
local body = os.getenv("WRK_BODY")
local threads = {}

function setup(thread)
  thread:set("tid", tostring(#threads + 1))
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json"}
  if kind == "unique" then
    headers["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. counter
  elseif kind == "replay" then
    headers["Idempotency-Key"] = replay_prefix .. (counter % replay_keys)
  end
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d, "mean_us": %f}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


# ---------------------------------------------------------------- statements per mode


def count_statements(url: str) -> dict[str, list[str]]:
    """One in-process request per mode, its SQL recorded by an execute_wrapper."""
    os.environ.update(serve.site_env(url, CONN_MAX_AGE="0"))
    import django

    django.setup()
    from django.db import connection
    from django.test import Client

    client = Client()
    statements: dict[str, list[str]] = {}

    def run(name: str, path: str, key: str | None) -> None:
        recorded: list[str] = []

        def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            recorded.append(" ".join(sql.split()[:3]) + (" ..." if len(sql.split()) > 3 else ""))
            return execute(sql, params, many, context)

        headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
        with connection.execute_wrapper(wrapper):
            response = client.post(path, BODY, content_type="application/json", **headers)
        if response.status_code != 201:
            raise RuntimeError(f"{path}: {response.status_code} {response.content[:200]!r}")
        statements[name] = recorded

    for name, (path, kind) in PHASES.items():
        key = {"none": None, "unique": f"count-{uuid.uuid4()}", "replay": "count-replay"}[kind]
        if kind == "replay":
            key += "-" + REPLAY_PREFIX[path]
            guarded = "/two-phase/" if path == "/floor/replay/" else path
            client.post(guarded, BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)
        run(name, path, key)
    connection.close()
    return statements


# ---------------------------------------------------------------- load


def prepare_replays(base: str) -> None:
    for path in ("/two-phase/", "/encrypted/", "/cached/"):
        for number in range(REPLAY_KEYS):
            key = f"{REPLAY_PREFIX[path]}{number}"
            request = urllib.request.Request(
                base + path,
                data=BODY.encode(),
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                if answer.status != 201:
                    raise RuntimeError(f"replay key {key}: {answer.status}")


def wrk(base: str, name: str, seconds: float, options: argparse.Namespace, script: Path) -> dict:
    path, kind = PHASES[name]
    env = dict(
        os.environ,
        WRK_PREFIX=uuid.uuid4().hex[:12],
        WRK_KEYS=kind,
        WRK_REPLAY_KEYS=str(REPLAY_KEYS),
        WRK_REPLAY_PREFIX=REPLAY_PREFIX.get(path, ""),
        WRK_BODY=BODY,
    )
    command = [
        "wrk",
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base + path,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


def aggregate(runs: list[dict]) -> dict[str, float]:
    requests = sum(run["requests"] for run in runs)
    seconds = sum(run["duration_us"] for run in runs) / 1e6
    return {
        "rps": requests / seconds,
        "p50": statistics.median(run["p50_us"] for run in runs) / 1000,
        "p99": statistics.median(run["p99_us"] for run in runs) / 1000,
        "errors": sum(run["status_errors"] + run["socket_errors"] for run in runs),
        "requests": requests,
    }


def report(results: dict[str, dict[str, float]], statements: dict[str, list[str]]) -> bool:
    bare = results["bare"]
    print(f"\n{'phase':18} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'SQL':>4}")
    for name, result in results.items():
        print(
            f"{name:18} {result['rps']:8.0f} {result['p50']:7.2f} {result['p99']:7.2f} "
            f"{result['errors']:6.0f} {len(statements[name]):4d}"
        )
    print(
        f"\n{'mode':12} {'rps/bare':>8} {'rps/floor':>9} {'floor/bare':>10} {'p50/bare':>8} "
        f"{'p99/bare':>8} {'p50/floor':>9} {'p99/floor':>9} {'+SQL':>5} {'+SQL/floor':>10}  targets"
    )
    ok = True
    for mode in MODES:
        result, floor = results[mode], results[f"floor {mode}"]
        to_bare = result["rps"] / bare["rps"]
        to_floor = result["rps"] / floor["rps"]
        floor_to_bare = floor["rps"] / bare["rps"]
        target = TARGETS.get(mode)
        verdicts = []
        if target is not None:
            if to_bare >= target:
                verdict = "met"
            elif floor_to_bare < target:
                verdict = f"past the floor ({floor_to_bare:.2f})"
            else:
                verdict = "MISSED"
                ok = False
            verdicts.append(f">= {target} bare: {verdict}")
        floor_met = to_floor >= FLOOR_TARGET
        ok = ok and floor_met
        verdicts.append(f">= {FLOOR_TARGET} floor: {'met' if floor_met else 'MISSED'}")
        added = len(statements[mode]) - len(statements["bare"])
        over_floor = len(statements[mode]) - len(statements[f"floor {mode}"])
        print(
            f"{mode:12} {to_bare:8.2f} {to_floor:9.2f} {floor_to_bare:10.2f} "
            f"{result['p50'] / bare['p50']:8.2f} {result['p99'] / bare['p99']:8.2f} "
            f"{result['p50'] / floor['p50']:9.2f} {result['p99'] / floor['p99']:9.2f} "
            f"{added:+5d} {over_floor:+10d}  {'; '.join(verdicts)}"
        )
    report_encryption(results, statements)
    ok = report_replay_cache(results) and ok
    print("\nstatements per request (execute_wrapper, one in-process request each):")
    for name, sql in statements.items():
        verbs = Counter(statement.split()[0] for statement in sql)
        print(f"  {name:18} {len(sql)}: {dict(verbs)}")
    return ok


def report_encryption(
    results: dict[str, dict[str, float]], statements: dict[str, list[str]]
) -> None:
    """Each encrypted phase against the same phase without encryption, from the same run."""
    pairs = {name: plain for name, plain in ENCRYPTED.items() if {name, plain} <= set(results)}
    if not pairs:
        return
    bare = results["bare"]
    print(
        f"\n{'encryption on':18} {'rps/plain':>9} {'rps/bare':>8} {'p50/plain':>9} "
        f"{'p99/plain':>9} {'+SQL':>5}  (plain: the same phase without ENCRYPTION_KEYS)"
    )
    for name, plain in pairs.items():
        result, without = results[name], results[plain]
        print(
            f"{name:18} {result['rps'] / without['rps']:9.2f} {result['rps'] / bare['rps']:8.2f} "
            f"{result['p50'] / without['p50']:9.2f} {result['p99'] / without['p99']:9.2f} "
            f"{len(statements[name]) - len(statements[plain]):+5d}"
        )
    seal, unseal = crypto_cost()
    print(
        f"  in process, per request: encrypting the stored response {seal:.1f} us, "
        f"decrypting it for a replay {unseal:.1f} us (the benchmark's response, best of 5)"
    )


def report_replay_cache(results: dict[str, dict[str, float]]) -> bool:
    """The replay-cache phases (Redis, Django's RedisCache) against the same phases
    without it, from the same run, with the issue's targets: a cached replay at 1.3x the
    bare view or better, a first request within 3% of one without the cache."""
    pairs = {name: plain for name, plain in CACHED.items() if {name, plain} <= set(results)}
    if not pairs:
        return True
    bare = results["bare"]
    ok = True
    print(
        f"\n{'replay cache on':18} {'rps/plain':>9} {'rps/bare':>8} {'p50/plain':>9} "
        f"{'p99/plain':>9}  target  (plain: the same phase without REPLAY_CACHE)"
    )
    for name, plain in pairs.items():
        result, without = results[name], results[plain]
        ratios = {
            "rps/plain": result["rps"] / without["rps"],
            "rps/bare": result["rps"] / bare["rps"],
        }
        measure, target = CACHED_TARGETS[name]
        met = ratios[measure] >= target
        ok = ok and met
        print(
            f"{name:18} {ratios['rps/plain']:9.2f} {ratios['rps/bare']:8.2f} "
            f"{result['p50'] / without['p50']:9.2f} {result['p99'] / without['p99']:9.2f}  "
            f"{measure} >= {target}: {'met' if met else 'MISSED'}"
        )
    return ok


def crypto_cost(rounds: int = 2000) -> tuple[float, float]:
    """Microseconds to seal and to unseal the benchmark's stored response, in this process."""
    from django.test import override_settings

    from django_idempotency import encryption
    from django_idempotency.operation import Stored

    stored = Stored(
        status=201,
        headers={"Content-Type": "application/json", "Location": "/orders/123456/"},
        body=b'{"id": 123456, "reference": "bench", "amount": 1}',
    )
    key = "YmVuY2htYXJrcy1vbmx5LWZlcm5ldC1rZXktMzJieXQ="
    with override_settings(IDEMPOTENCY={"ENCRYPTION_KEYS": [key]}):
        sealed = encryption.seal(stored)
        seal = unseal = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                encryption.seal(stored)
            seal = min(seal, (time.perf_counter() - started) / rounds * 1e6)
            started = time.perf_counter()
            for _ in range(rounds):
                encryption.unseal(sealed.headers, sealed.body)
            unseal = min(unseal, (time.perf_counter() - started) / rounds * 1e6)
    return seal, unseal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per phase and rotation")
    parser.add_argument("--rotations", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4, help="wrk -c")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--only", nargs="*", default=None, help="phases to run (and bare)")
    parser.add_argument(
        "--db-name",
        default=DATABASE,
        help=f"the PostgreSQL database the run drops and creates (default {DATABASE})",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH.png",
        default=None,
        help="also draw the figures as a PNG (needs matplotlib: the benchmark extra)",
    )
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is missing: apt-get install -y wrk")
    plot = plots.plot_path(parser, options.plot)
    if plot is not None and options.only:
        parser.error("--plot draws every phase: leave out --only")
    if not options.db_name.isidentifier():
        parser.error(f"--db-name {options.db_name!r}: letters, digits and _ only")
    load = os.getloadavg()[0]  # other work on the machine skews every phase
    serve.recreate_database("postgres", options.db_name)
    url = serve.database_url("postgres", options.db_name)
    serve.migrate(url)
    statements = count_statements(url)
    log = Path(tempfile.gettempdir()) / "overhead-gunicorn.log"
    server = serve.Gunicorn(
        url, workers=options.workers, timeout=30, log=log, env={"CONN_MAX_AGE": "600"}
    )
    script = Path(tempfile.mkdtemp(prefix="overhead-")) / "keys.lua"
    script.write_text(LUA)
    names = list(PHASES) if not options.only else ["bare", *options.only]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        prepare_replays(server.base)
        for name in names:  # warm every worker's connection and code path
            wrk(server.base, name, 1, options, script)
        started = time.monotonic()
        for rotation in range(options.rotations):
            order = names[rotation % len(names) :] + names[: rotation % len(names)]
            for name in order:
                runs[name].append(wrk(server.base, name, options.seconds, options, script))
            print(f"rotation {rotation + 1}/{options.rotations} done", flush=True)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
        shutil.rmtree(script.parent, ignore_errors=True)
    results = {name: aggregate(runs[name]) for name in names}
    setup = (
        f"gunicorn {options.workers} sync workers, wrk -t{options.threads} "
        f"-c{options.connections}, {options.rotations} rotations x {options.seconds} s "
        f"per phase"
    )
    print(f"{setup} ({elapsed:.0f} s, load average {load:.1f} before the run)")
    if options.only:
        for name in names:
            print(name, results[name])
        report_encryption(results, statements)
        report_replay_cache(results)
        return 0
    ok = report(results, statements)
    if plot is not None:
        caption = (
            f"PostgreSQL on loopback, {setup}, {os.cpu_count()} cores, "
            f"load average {load:.1f} before the run"
        )
        plots.overhead(results, statements, TARGETS, FLOOR_TARGET, caption, plot)
        print(f"plot written to {plot}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
