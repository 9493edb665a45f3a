"""Test settings: SQLite by default; DATABASE_URL points the same suite at PostgreSQL or MariaDB."""

from __future__ import annotations

import importlib.util
import os

import dj_database_url

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django_idempotency",
    "tests.testapp",
]
# DRF is optional: the no-DRF run uses these same settings without it.
if importlib.util.find_spec("rest_framework") is not None:
    INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken"]
if importlib.util.find_spec("drf_spectacular") is not None:
    INSTALLED_APPS += ["drf_spectacular"]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_url = os.environ.get("DATABASE_URL", "sqlite:///:memory:")
DATABASES = {"default": dj_database_url.parse(_url, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE: a writer waits up to `timeout` for the lock instead of failing at once.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 5}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}
    # The server's default, case-insensitive collation: keys must stay case-sensitive.
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci"}

# POOLER=transaction: DATABASE_URL is a transaction-pooling PgBouncer (scripts/pgbouncer),
# and the settings are what Django asks of such a project; psycopg 3 binds parameters on
# the client unless the URL asks otherwise. Test databases are made and dropped through
# the pooler too (tests/pooler.py).
if os.environ.get("POOLER") == "transaction":
    if DATABASES["default"].get("OPTIONS", {}).get("server_side_binding"):
        raise ValueError("POOLER=transaction: server-side binding needs a session")
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True

# ISOLATION=repeatable_read|serializable: the suite at a stricter level than Django's
# default READ COMMITTED (.ci/run runs the engine, contract and race tests so).
_isolation = os.environ.get("ISOLATION", "")
if _isolation and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    import psycopg

    DATABASES["default"].setdefault("OPTIONS", {})["isolation_level"] = getattr(
        psycopg.IsolationLevel, _isolation.upper()
    )
elif _isolation and DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"]["OPTIONS"]["isolation_level"] = _isolation.replace("_", " ")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A second, separate database standing in for a read replica that has not caught up
# (nothing ever replicates into it). Only tests that declare it, with
# django_db(databases=["default", "replica"]), get it set up: tests/test_routing.py
# routes reads there to prove that records are read from the writer.
DATABASES["replica"] = {
    **DATABASES["default"],
    "NAME": (
        ":memory:"
        if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
        else f"{DATABASES['default']['NAME']}_replica"
    ),
    "TEST": {
        key: value
        for key, value in DATABASES["default"].get("TEST", {}).items()
        if key in {"CHARSET", "COLLATION"}
    },
}

# A tenant's shard: a second, separate database of the same engine. tests/test_sharding.py
# routes each tenant's records and business rows to its own database ("default" holds
# tenant "a", "shard" tenant "b").
DATABASES["shard"] = {
    **DATABASES["replica"],
    "NAME": (
        ":memory:"
        if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
        else f"{DATABASES['default']['NAME']}_shard"
    ),
}
