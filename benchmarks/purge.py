"""How ``purge_idempotency_records`` behaves on a big table, on PostgreSQL or MariaDB.

Loads N expired records among N live ones (interleaved on disk, the harder case for the
heap), runs the real management command in a subprocess and reports:

- records deleted per second (wall clock of the whole command, start-up included), and
  per second of batch transactions alone;
- the longest single batch transaction, from the command's ``-v 2`` per-batch lines
  (each is one transaction: selection of the keys and their delete);
- the command's peak memory (``ru_maxrss`` of that child, from ``os.wait4``), next to a
  bare ``manage.py check`` process for scale;
- that every live record survived.

Run::

    .venv/bin/python benchmarks/purge.py            # 1,000,000 expired + 1,000,000 live
    .venv/bin/python benchmarks/purge.py --rows 100000 --batch-size 5000
    .venv/bin/python benchmarks/purge.py --database mariadb --rows 300000

``DATABASE_URL`` (``postgres://...`` or ``mysql://...``) names the database; without it,
``--database`` picks ``idem_bench_purge`` on the local server. The script drops and
recreates that database, so give it one of its own.
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
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URLS = {
    "postgresql": "postgres://postgres@127.0.0.1:5432/idem_bench_purge",
    "mariadb": "mysql://root@127.0.0.1:3306/idem_bench_purge",
}
BATCH_LINE = re.compile(r"Batch (\d+): deleted (\d+) of (\d+) (\w+) records in ([\d.]+)s\.")

# Every other row expired (COMPLETED, expired up to 30 days ago); the others live: mostly
# COMPLETED within their TTL, 1 in 100 IN_PROGRESS under a live lease. Bodies ~200 bytes.
POSTGRES_LOAD = """
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


# The same rows on MariaDB (its SEQUENCE engine's seq_1_to_N for the series).
MARIADB_LOAD = """
INSERT INTO django_idempotency_record (
    id, scope, `key`, fingerprint, status, method, route, response_status,
    response_headers, response_body, lease_token, locked_until, attempts,
    recovery_point, created_at, completed_at, expires_at
)
SELECT
    {uuid}, CONCAT(IF(i % 2 = 0, 'old:', 'live:'), i % 5000), CONCAT('key-', i),
    CONCAT(MD5(i), MD5(i + 1)),
    IF(i % 2 = 1 AND i % 200 = 1, 'in_progress', 'completed'),
    'POST', '/orders/',
    IF(i % 2 = 1 AND i % 200 = 1, NULL, 201),
    '{{"Content-Type": "application/json", "Location": "/orders/1/"}}',
    REPEAT(CONCAT('{{"id": ', i, ', "amount": 100}}'), 6),
    {uuid},
    IF(i % 2 = 1 AND i % 200 = 1, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, NULL),
    1, '', created, created,
    IF(i % 2 = 0, UTC_TIMESTAMP(6) - INTERVAL (i % 43200) MINUTE,
       UTC_TIMESTAMP(6) + INTERVAL 1 HOUR + INTERVAL (i % 1380) MINUTE)
FROM (
    SELECT seq AS i, UTC_TIMESTAMP(6) - INTERVAL 31 DAY + INTERVAL (seq % 40000) MINUTE AS created
    FROM seq_1_to_{total}
) AS series
"""


class Postgres:
    now = "now()"

    def __init__(self, url: str) -> None:
        import psycopg

        self.driver = psycopg
        parts = urlsplit(url)
        self.name = parts.path.lstrip("/")
        self.conninfo = url.replace("postgres://", "postgresql://", 1)
        self.server = (
            parts._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
        )

    def recreate(self) -> None:
        with self.driver.connect(self.server, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{self.name}"')

    def load(self, total: int) -> str:
        with self.driver.connect(self.conninfo, autocommit=True) as db:
            db.execute(POSTGRES_LOAD, {"total": total})
            db.execute("VACUUM ANALYZE django_idempotency_record")
            # The load's dirty pages written now, not by a checkpoint during the purge.
            db.execute("CHECKPOINT")
            row = db.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('django_idempotency_record'))"
            ).fetchone()
        return str(row[0])  # type: ignore[index]

    def fetch(self, sql: str) -> tuple[Any, ...]:
        with self.driver.connect(self.conninfo, autocommit=True) as db:
            return tuple(db.execute(sql).fetchone())  # type: ignore[arg-type]


class MariaDB:
    now = "UTC_TIMESTAMP(6)"

    def __init__(self, url: str) -> None:
        import MySQLdb

        self.driver = MySQLdb
        parts = urlsplit(url)
        self.name = parts.path.lstrip("/")
        self.params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": parts.username or "root",
            "password": parts.password or "",
        }

    def connect(self, database: str | None = None) -> Any:
        db = self.driver.connect(**self.params, **({"database": database} if database else {}))
        db.autocommit(True)
        return db

    def recreate(self) -> None:
        db = self.connect()
        db.cursor().execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        db.cursor().execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
        db.close()

    def load(self, total: int) -> str:
        db = self.connect(self.name)
        cursor = db.cursor()
        cursor.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'django_idempotency_record' AND column_name = 'id'",
            [self.name],
        )
        native = cursor.fetchone()[0].lower() == "uuid"
        uuid = "UUID()" if native else "REPLACE(UUID(), '-', '')"
        cursor.execute(MARIADB_LOAD.format(uuid=uuid, total=total))
        cursor.execute("ANALYZE TABLE django_idempotency_record")
        cursor.fetchall()
        cursor.execute(
            "SELECT ROUND((data_length + index_length) / 1048576) FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = 'django_idempotency_record'",
            [self.name],
        )
        size = f"{cursor.fetchone()[0]} MB"
        db.close()
        return size

    def fetch(self, sql: str) -> tuple[Any, ...]:
        db = self.connect(self.name)
        cursor = db.cursor()
        cursor.execute(sql)
        row = tuple(cursor.fetchone())
        db.close()
        return row


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
    parser.add_argument(
        "--database",
        choices=sorted(DEFAULT_URLS),
        help="the local server to use when DATABASE_URL is not set (default postgresql)",
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL") or DEFAULT_URLS[args.database or "postgresql"]
    if url.startswith(("postgres://", "postgresql://")):
        backend: Postgres | MariaDB = Postgres(url)
    elif url.startswith("mysql://"):
        backend = MariaDB(url)
    else:
        sys.exit("benchmarks/purge.py runs on PostgreSQL or MariaDB (postgres:// or mysql://).")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)

    print(f"database: {url}")
    backend.recreate()
    subprocess.run(django("migrate", "-v", "0"), env=env, cwd=ROOT, check=True)
    started = time.perf_counter()
    size = backend.load(2 * args.rows)
    now = backend.now
    expired, live = backend.fetch(
        f"SELECT SUM(expires_at <= {now}), SUM(expires_at > {now}) FROM django_idempotency_record"
        if isinstance(backend, MariaDB)
        else f"SELECT count(*) FILTER (WHERE expires_at <= {now}),"
        f" count(*) FILTER (WHERE expires_at > {now}) FROM django_idempotency_record"
    )
    expired, live = int(expired), int(live)
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
    remaining, live_left, expired_left = (
        int(value)
        for value in backend.fetch(
            "SELECT count(*), SUM(scope LIKE 'live:%'),"
            f" SUM(expires_at <= {now} - INTERVAL 1 MINUTE) FROM django_idempotency_record"
            if isinstance(backend, MariaDB)
            else "SELECT count(*), count(*) FILTER (WHERE scope LIKE 'live:%'),"
            f" count(*) FILTER (WHERE expires_at <= {now} - interval '1 minute')"
            " FROM django_idempotency_record"
        )
    )

    print()
    print("command: DATABASE_URL=" + url + " PYTHONPATH=benchmarks:. " + " ".join(command))
    print(output.splitlines()[-1])
    print(f"deleted:              {deleted:,} records in {len(batches):,} batches")
    print(f"wall time:            {seconds:.1f}s (process start-up included)")
    print(f"deleted per second:   {deleted / seconds:,.0f}")
    print(
        f"in batches alone:     {sum(times):.2f}s, {deleted / sum(times):,.0f} records/s "
        "(the batch transactions, without start-up)"
    )
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
