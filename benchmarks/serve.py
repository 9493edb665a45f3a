"""Shared by chaos.py and overhead.py: a fresh database, migrations, and gunicorn.

Both scripts run the project in ``benchsite/`` under gunicorn against a database they
create from scratch (``idem_chaos`` / ``idem_bench``), so a run never depends on, or
damages, anything else on the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
URLS = {
    "postgres": "postgres://postgres@127.0.0.1:5432/{name}",
    "mariadb": "mysql://root@127.0.0.1:3306/{name}",
}


#: PostgreSQL through the transaction-pooling PgBouncer that ./scripts/pgbouncer starts.
POOLED_URL = "postgres://postgres@127.0.0.1:6432/{name}"


def database_url(kind: str, name: str) -> str:
    return URLS[kind].format(name=name)


def recreate_database(kind: str, name: str) -> None:
    if kind == "postgres":
        import psycopg

        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{name}"')
    else:
        import MySQLdb

        db = MySQLdb.connect(host="127.0.0.1", port=3306, user="root")
        try:
            cursor = db.cursor()
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
            )
        finally:
            db.close()


def site_env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="benchsite.settings",
        PYTHONPATH=str(BENCHMARKS),
        **extra,
    )
    return env


def migrate(url: str) -> None:
    """Migrate without system checks: tests/chaos/test_benchsite.py runs those, and a
    check failing there should not stop a chaos or benchmark run."""
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v", "0", "--skip-checks"],
        env=site_env(url),
        cwd=BENCHMARKS,
        check=True,
    )


def connect(kind: str, name: str) -> Any:
    """A plain DB-API connection (autocommit) for checking results without Django."""
    if kind == "postgres":
        import psycopg

        return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True)
    import MySQLdb

    db = MySQLdb.connect(host="127.0.0.1", port=3306, user="root", database=name)
    db.autocommit(True)
    return db


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """gunicorn serving benchsite with sync workers on a loopback port."""

    def __init__(
        self,
        url: str,
        *,
        workers: int = 4,
        timeout: float = 30,
        graceful_timeout: int = 2,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        command = [
            str(BIN / "gunicorn"),
            "benchsite.wsgi:application",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--timeout",
            str(round(timeout)),
            "--graceful-timeout",
            str(graceful_timeout),
            "--backlog",
            "512",
            "--preload",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=BENCHMARKS,
            env=site_env(url, **(env or {})),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(workers)

    def _wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log}")
            try:
                with urllib.request.urlopen(self.base + "/health/", timeout=2) as answer:
                    if answer.status == 200 and len(self.worker_pids()) >= workers:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not start; see {self.log}")

    def worker_pids(self) -> list[int]:
        """The master's live children (the workers), read from /proc."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
