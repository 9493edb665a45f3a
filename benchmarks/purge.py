"""How ``purge_idempotency_records`` behaves on a big table, on PostgreSQL.

Loads N expired records among N live ones (interleaved on disk, the harder case for the
heap), runs the real management command in a subprocess and reports:

- records deleted per second (wall clock of the whole command, start-up included);
- the longest single batch transaction, from the command's ``-v 2`` per-batch lines
  (each is one transaction: selection of the keys and their delete);
- the command's peak memory (``ru_maxrss`` of that child, from ``os.wait4``), next to a
  bare ``manage.py check`` process for scale;
- that every live record survived.

Run::

    .venv/bin/python benchmarks/purge.py            # 1,000,000 expired + 1,000,000 live
    .venv/bin/python benchmarks/purge.py --rows 100000 --batch-size 5000

``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/idem_bench_purge``) names
the database; the script drops and recreates it, so give it one of its own.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/idem_bench_purge"
BATCH_LINE = re.compile(r"Batch (\d+): deleted (\d+) of (\d+) (\w+) records in ([\d.]+)s\.")

# Every other row expired (COMPLETED, expired up to 30 days ago); the others live: mostly
# COMPLETED within their TTL, 1 in 100 IN_PROGRESS under a live lease. Bodies ~200 bytes.
LOAD = """
INSERT INTO django_idempotency_record (
    id, scope, key, fingerprint, status, method, route, response_status,
    response_headers, response_body, lease_token, locked_until, attempts,
    recovery_point, created_at, completed_at, expires_at
)
SELECT
    gen_random_uuid(),
    CASE WHEN i %% 2 = 0 THEN 'old:' ELSE 'live:' END || (i %% 5000),
    'key-' || i,
    md5(i::text) || md5((i + 1)::text),
    CASE WHEN i %% 2 = 1 AND i %% 200 = 1 THEN 'in_progress' ELSE 'completed' END,
    'POST',
    '/orders/',
    CASE WHEN i %% 2 = 1 AND i %% 200 = 1 THEN NULL ELSE 201 END,
    '{"Content-Type": "application/json", "Location": "/orders/1/"}'::jsonb,
    convert_to(repeat('{"id": ' || i || ', "amount": 100}', 6), 'UTF8'),
    gen_random_uuid(),
    CASE WHEN i %% 2 = 1 AND i %% 200 = 1 THEN now() + interval '1 hour' ELSE NULL END,
    1,
    '',
    t.created,
    t.created,
    CASE WHEN i %% 2 = 0 THEN now() - (i %% 43200) * interval '1 minute'
         ELSE now() + interval '1 hour' + (i %% 1380) * interval '1 minute' END
FROM generate_series(1, %(total)s) AS i,
     LATERAL (SELECT now() - interval '31 days' + (i %% 40000) * interval '1 minute') AS t(created)
"""


def admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    return parts._replace(path="/postgres").geturl().replace("postgres://", "postgresql://"), name


def recreate(url: str) -> None:
    server, name = admin_url(url)
    with psycopg.connect(server, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')


def django(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", *args, "--settings=purge_settings"]


def run_measured(command: list[str], env: dict[str, str]) -> tuple[int, float, int, str]:
    """Run ``command``; its exit status, wall seconds, peak RSS in KiB, and stdout."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out)
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return process.returncode, seconds, usage.ru_maxrss, out.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired rows (and live)")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("benchmarks/purge.py runs on PostgreSQL (DATABASE_URL=postgres://...).")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)

    print(f"database: {url}")
    recreate(url)
    subprocess.run(django("migrate", "-v", "0"), env=env, cwd=ROOT, check=True)
    conninfo = url.replace("postgres://", "postgresql://")
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(LOAD, {"total": 2 * args.rows})
        db.execute("VACUUM ANALYZE django_idempotency_record")
        expired, live, size = db.execute(
            "SELECT count(*) FILTER (WHERE expires_at <= now()),"
            " count(*) FILTER (WHERE expires_at > now()),"
            " pg_size_pretty(pg_total_relation_size('django_idempotency_record'))"
            " FROM django_idempotency_record"
        ).fetchone()  # type: ignore[misc]
    print(
        f"loaded {expired:,} expired and {live:,} live records ({size} with indexes) "
        f"in {time.perf_counter() - started:.1f}s"
    )

    _status, _seconds, baseline_kib, _out = run_measured(django("check"), env)
    command = django("purge_idempotency_records", "--batch-size", str(args.batch_size))
    status, seconds, peak_kib, output = run_measured([*command, "-v", "2"], env)
    if status != 0:
        sys.exit(f"the purge command failed with exit status {status}")
    batches = [
        (int(m[2]), float(m[5])) for m in map(BATCH_LINE.fullmatch, output.splitlines()) if m
    ]
    deleted = sum(count for count, _s in batches)
    times = sorted(s for _count, s in batches)
    with psycopg.connect(conninfo, autocommit=True) as db:
        remaining, live_left, expired_left = db.execute(
            "SELECT count(*), count(*) FILTER (WHERE scope LIKE 'live:%'),"
            " count(*) FILTER (WHERE expires_at <= now() - interval '1 minute')"
            " FROM django_idempotency_record"
        ).fetchone()  # type: ignore[misc]

    print()
    print("command: DATABASE_URL=" + url + " PYTHONPATH=benchmarks:. " + " ".join(command))
    print(output.splitlines()[-1])
    print(f"deleted:              {deleted:,} records in {len(batches):,} batches")
    print(f"wall time:            {seconds:.1f}s (process start-up included)")
    print(f"deleted per second:   {deleted / seconds:,.0f}")
    print(
        f"batch transaction:    longest {times[-1] * 1000:.1f} ms, "
        f"median {statistics.median(times) * 1000:.1f} ms, "
        f"p99 {times[int(len(times) * 0.99) - 1] * 1000:.1f} ms"
    )
    print(
        f"peak memory:          {peak_kib / 1024:.1f} MiB "
        f"(a bare `manage.py check` process: {baseline_kib / 1024:.1f} MiB)"
    )
    survived = live_left == live and remaining == live
    print(
        f"live records:         {live_left:,} of {live:,} survived; "
        f"{remaining - live_left:,} others left, {expired_left:,} expired left"
        + ("" if survived else "  <-- MISMATCH")
    )
    if not survived:
        sys.exit(1)


if __name__ == "__main__":
    main()
