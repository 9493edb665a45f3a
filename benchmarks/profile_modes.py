"""Where a guarded request's CPU time goes, per mode: a cProfile of in-process requests.

Runs each endpoint of ``benchsite`` through Django's test client against PostgreSQL
(database ``idem_bench``, recreated), profiles CPU time (``time.process_time``) and sums
each function's own time by where it lives: the package, the ORM building queries and
model instances, Django's database layer and transactions, the driver, request handling.
The difference from the bare view is what the guard costs in this process; the
database server's own time is not in it (see ``overhead.py`` for end-to-end figures).

    python benchmarks/profile_modes.py                 # 300 requests per endpoint
    python benchmarks/profile_modes.py --top two-phase # plus the package's hottest calls

cProfile inflates many small calls, so read the shares, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve

DATABASE = "idem_bench"
BODY = '{"reference": "bench", "amount": 1}'
ENDPOINTS = {
    "bare": "/bare/",
    "two-phase": "/two-phase/",
    "floor two-phase": "/floor/two-phase/",
    "single": "/single/",
    "floor single": "/floor/single/",
    "non-atomic": "/non-atomic/",
    "floor non-atomic": "/floor/non-atomic/",
    "replay": "/two-phase/",
    "floor replay": "/floor/replay/",
}
GROUPS = [
    ("package", "/django_idempotency/"),
    ("ORM queries", "/django/db/models/"),
    ("DB layer+tx", "/django/db/"),
    ("driver", "/psycopg/"),
    ("request", "/django/"),
]


def group_of(filename: str) -> str:
    for name, marker in GROUPS:
        if marker in filename:
            return name
    return "other"


def profile(client: object, name: str, requests: int) -> tuple[pstats.Stats, float]:
    path = ENDPOINTS[name]
    prefix = uuid.uuid4().hex

    def run() -> None:
        for number in range(requests):
            if name == "bare":
                headers = {}
            elif "replay" in name:
                headers = {"HTTP_IDEMPOTENCY_KEY": f"replay-{number % 100}"}
            else:
                headers = {"HTTP_IDEMPOTENCY_KEY": f"{prefix}-{number}"}
            response = client.post(path, BODY, content_type="application/json", **headers)  # type: ignore[attr-defined]
            assert response.status_code == 201, response.content

    run()  # warm up (and a first pass over fresh keys)
    prefix = uuid.uuid4().hex
    profiler = cProfile.Profile(time.process_time)
    started = time.process_time()
    profiler.enable()
    run()
    profiler.disable()
    return pstats.Stats(profiler), (time.process_time() - started) / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", nargs="*", default=[], help="modes to list hot functions of")
    options = parser.parse_args()
    serve.recreate_database("postgres", DATABASE)
    url = serve.database_url("postgres", DATABASE)
    serve.migrate(url)
    os.environ.update(serve.site_env(url, CONN_MAX_AGE="600"))
    import django

    django.setup()
    from django.test import Client

    client = Client()
    for number in range(100):
        client.post(
            "/two-phase/",
            BODY,
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY=f"replay-{number}",
        )
    columns = [name for name, _ in GROUPS] + ["other"]
    print(f"CPU us per request (cProfile), {options.requests} requests each\n")
    print(f"{'endpoint':18} {'total':>7} " + " ".join(f"{c:>12}" for c in columns))
    baseline: dict[str, float] = {}
    for name in ENDPOINTS:
        stats, total = profile(client, name, options.requests)
        by_group: dict[str, float] = defaultdict(float)
        for (filename, _line, _func), row in stats.stats.items():  # type: ignore[attr-defined]
            by_group[group_of(filename)] += row[2]  # own time
        shares = {g: by_group[g] / options.requests * 1e6 for g in columns}
        if name == "bare":
            baseline = shares
        print(f"{name:18} {total:7.0f} " + " ".join(f"{shares[c]:12.0f}" for c in columns))
        if name in options.top:
            print(f"\n  hottest package functions in {name} (cumulative us per request):")
            package = {
                key: row
                for key, row in stats.stats.items()  # type: ignore[attr-defined]
                if "/django_idempotency/" in key[0]
            }
            for (filename, line, func), row in sorted(
                package.items(), key=lambda item: -item[1][3]
            )[:12]:
                where = f"{Path(filename).name}:{line}({func})"
                print(f"    {row[3] / options.requests * 1e6:8.0f}  {where}")
            print()
    print(f"\nbare view's split: {', '.join(f'{k} {v:.0f}' for k, v in baseline.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
