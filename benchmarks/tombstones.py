"""What tombstones cost on PostgreSQL: table and index size per million of them.

Loads N tombstones as purge leaves them (a completed record whose response was emptied:
scope, key, fingerprint, operation id, response status, completed-at), keys and scopes
the length real ones have (a UUID key, ``user:<pk>``, a 64-character fingerprint), then
reports the heap, each index and the total, per million rows.

Run::

    .venv/bin/python benchmarks/tombstones.py                 # 1,000,000 tombstones
    .venv/bin/python benchmarks/tombstones.py --rows 200000

It drops and recreates its own database (``--db-name``, default idem_bench_tombstones).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve

LOAD = """
INSERT INTO django_idempotency_record (
    id, scope, key, fingerprint, status, method, route, response_status, response_headers,
    response_body, lease_token, locked_until, attempts, recovery_point, created_at,
    completed_at, expires_at, liveness, claimed_at)
SELECT gen_random_uuid(), 'user:' || (n %% 100000), gen_random_uuid()::text,
       md5(n::text) || md5((n + 1)::text), 'completed', 'POST', '/orders/', 201, '{}',
       NULL, gen_random_uuid(), NULL, 1, '', now() - interval '2 days',
       now() - interval '2 days', now() - interval '1 day', 'row', now() - interval '2 days'
FROM generate_series(1, %s) AS n
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db-name", default="idem_bench_tombstones")
    options = parser.parse_args()
    serve.recreate_database("postgres", options.db_name)
    serve.migrate(serve.database_url("postgres", options.db_name))
    db = serve.connect("postgres", options.db_name)
    try:
        db.execute(LOAD, [options.rows])
        db.execute("VACUUM ANALYZE django_idempotency_record")
        sizes = db.execute(
            "SELECT pg_table_size('django_idempotency_record'), "
            "pg_indexes_size('django_idempotency_record'), "
            "pg_total_relation_size('django_idempotency_record')"
        ).fetchone()
        indexes = db.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'django_idempotency_record'::regclass ORDER BY 2 DESC"
        ).fetchall()
    finally:
        db.close()
    per_million = 1_000_000 / options.rows
    mib = 1024 * 1024
    print(f"{options.rows:,} tombstones on PostgreSQL; per million:")
    for label, size in zip(("table (heap, TOAST)", "indexes", "total"), sizes, strict=True):
        share = size * per_million / mib
        print(f"  {label:22} {share:8.1f} MiB  ({size / options.rows:.0f} B/row)")
    for name, size in indexes:
        print(f"    {name:40} {size * per_million / mib:8.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
