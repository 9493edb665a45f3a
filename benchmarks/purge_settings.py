"""Settings for ``benchmarks/purge.py``: just the app, on the database in ``DATABASE_URL``."""

from __future__ import annotations

import os

import dj_database_url

SECRET_KEY = "benchmarks-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django_idempotency"]
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/idem_bench_purge")
    )
}
