"""Settings read from the environment, so one project serves both databases and both scripts.

- ``DATABASE_URL``: required (``postgres://...`` or ``mysql://...``).
- ``BENCH_LEASE``: the idempotency lease in seconds (default 90); the chaos suite uses a
  short one, above gunicorn's ``--timeout``, so killed attempts are taken over in the run.
- ``BENCH_WAIT``: how long a concurrent duplicate waits before 409 (default 0 s).
- ``BENCH_SESSION_LOCKS``: ``auto``, ``on`` or ``off`` for ``IDEMPOTENCY["SESSION_LOCKS"]``
  (the liveness signal of a running ``atomic=False`` attempt); unset, the setting keeps
  its own default, as a new user's project would.
- ``BENCH_POOLER``: ``transaction`` behind a transaction-pooling PgBouncer (sets
  ``DISABLE_SERVER_SIDE_CURSORS``, as Django asks).
- ``CONN_MAX_AGE``: persistent connections (default 60 s).
- ``CHAOS_STATE_DIR`` / ``CHAOS_PROVIDER_URL``: set by ``chaos.py`` only.
"""

from __future__ import annotations

import os
from datetime import timedelta

import dj_database_url

SECRET_KEY = "benchmarks-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["django_idempotency", "benchsite"]
MIDDLEWARE: list[str] = (
    ["benchsite.chaos_views.PhaseMiddleware"] if os.environ.get("CHAOS_STATE_DIR") else []
)

DATABASES = {
    "default": dj_database_url.parse(
        os.environ["DATABASE_URL"], conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60"))
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
if os.environ.get("BENCH_POOLER") == "transaction":
    # What Django asks of a project behind a transaction-pooling PgBouncer (and what
    # SESSION_LOCKS "auto" reads).
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True

# overhead.py's /cached/ phases answer replays from Redis (REPLAY_CACHE, per request).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "replays": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
    },
}

IDEMPOTENCY = {
    "LEASE": timedelta(seconds=float(os.environ.get("BENCH_LEASE", "90"))),
    "TTL": timedelta(hours=1),
    "WAIT": timedelta(seconds=float(os.environ.get("BENCH_WAIT", "0"))),
}
if os.environ.get("BENCH_SESSION_LOCKS"):
    IDEMPOTENCY["SESSION_LOCKS"] = {"auto": "auto", "on": True, "off": False}[
        os.environ["BENCH_SESSION_LOCKS"]
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR"},
        "django_idempotency": {"handlers": ["console"], "level": "WARNING"},
    },
}
