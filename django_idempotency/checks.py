"""System checks: settings and risky set-ups, reported at start-up with a hint.

A bad setting is reported by ``manage.py check`` (and before ``runserver`` or
``migrate``) instead of failing a request in production. Ids are stable; a retired id
stays reserved.

============================  ===============================================================
id                            reported when
============================  ===============================================================
``django_idempotency.E001``   ``IDEMPOTENCY`` is not a dict
``django_idempotency.E002``   ``HEADER`` is not a valid HTTP header name
``django_idempotency.E003``   ``REQUIRED`` is not a bool
``django_idempotency.E004``   ``TTL`` is not a positive ``timedelta``
``django_idempotency.E005``   ``LEASE`` is not a positive ``timedelta``
``django_idempotency.E006``   ``WAIT`` is not a ``timedelta`` of zero or more
``django_idempotency.E007``   ``SCOPE`` is not a callable or the dotted path of one
``django_idempotency.E008``   ``MAX_RESPONSE_BYTES`` is not a positive int
``django_idempotency.E009``   ``METHODS`` is not a non-empty collection of unsafe methods
``django_idempotency.E010``   ``FORM_FIELD`` is not a non-empty string
``django_idempotency.E011``   ``PURGE_GRACE`` is not a ``timedelta`` of zero or more
``django_idempotency.E012``   ``PROBLEM_BASE_URL`` is not a string
``django_idempotency.E013``   ``IdempotentMixin`` is used but ``rest_framework`` is not installed
``django_idempotency.E014``   an ``atomic=False`` view runs inside ``ATOMIC_REQUESTS``
``django_idempotency.E015``   ``SESSION_LOCKS`` is not ``"auto"``, ``True`` or ``False``
``django_idempotency.E016``   ``CONFLICT_RETRIES`` is not an int of zero or more
``django_idempotency.E020``   ``REPLAY_CACHE`` does not name a cache in ``CACHES``
``django_idempotency.E021``   ``TOMBSTONE_TTL`` is not a ``timedelta`` of zero or more
``django_idempotency.E022``   ``DATABASES`` is not a list of aliases where records may live
``django_idempotency.E023``   a guarded view's ``using`` names a database not in ``DATABASES``
``django_idempotency.E017``   ``ENCRYPTION_KEYS`` is not a list of distinct, valid Fernet keys
``django_idempotency.E018``   ``ENCRYPTION_KEYS`` is set but ``cryptography`` is not installed
``django_idempotency.E019``   ``REDACT`` is not a callable or the dotted path of one
``django_idempotency.W001``   records live on another database than the models views write
``django_idempotency.W002``   ``IDEMPOTENCY`` has keys this version does not know
``django_idempotency.W003``   ``LEASE`` is shorter than 30 seconds
``django_idempotency.W004``   ``TTL`` is not longer than ``LEASE`` (globally or for one view)
``django_idempotency.W005``   ``django_idempotency.urls`` is not in the URLconf
``django_idempotency.W006``   ``AUTOCOMMIT`` is off for the records' database
``django_idempotency.W007``   MySQL/MariaDB without time-zone tables and ``TIME_ZONE`` not UTC
``django_idempotency.W008``   models may live on a database that holds no records (sharding)
``django_idempotency.I001``   ``ATOMIC_REQUESTS`` is on for the records' database
============================  ===============================================================
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Warning
from django.db import connections, router
from django.urls import NoReverseMatch, URLResolver, get_resolver, reverse
from django.utils.module_loading import import_string

from django_idempotency.conf import DEFAULTS

PREFIX = "django_idempotency."
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SANE_WORKER_TIMEOUT = timedelta(seconds=30)


def _user_settings() -> Any:
    return getattr(settings, "IDEMPOTENCY", None)


def _valid_names() -> str:
    return ", ".join(sorted(DEFAULTS))


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001-E012, E015-E022, W002-W004: the type and range of every setting."""
    user = _user_settings()
    if user is None:
        user = {}
    if not isinstance(user, Mapping):
        return [
            Error(
                f"IDEMPOTENCY must be a dict, not {type(user).__name__}.",
                hint=f"Set IDEMPOTENCY = {{...}} with any of: {_valid_names()}.",
                id=PREFIX + "E001",
            )
        ]
    errors: list[CheckMessage] = []
    for name, validate in VALIDATORS.items():
        if name in user:
            message = validate(user[name])
            if message is not None:
                text, hint, number = message
                errors.append(Error(f"IDEMPOTENCY[{name!r}] {text}", hint=hint, id=PREFIX + number))
    unknown = sorted(str(name) for name in user if name not in DEFAULTS)
    if unknown:
        errors.append(
            Warning(
                f"IDEMPOTENCY has unknown keys: {', '.join(unknown)}. They are ignored.",
                hint=f"Check the spelling; valid names are: {_valid_names()}.",
                id=PREFIX + "W002",
            )
        )
    errors.extend(_check_durations(user))
    return errors


def _header(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, str) and HEADER_NAME.match(value):
        return None
    return (
        f"must be a valid HTTP header name, not {value!r}.",
        "Use letters, digits and - only, e.g. 'Idempotency-Key' (the default).",
        "E002",
    )


def _required(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, bool):
        return None
    return (
        f"must be True or False, not {value!r}.",
        "True: a guarded request without a key gets 400; False: it runs unguarded.",
        "E003",
    )


def _positive_duration(number: str, example: str) -> Callable[[Any], tuple[str, str, str] | None]:
    def validate(value: Any) -> tuple[str, str, str] | None:
        if isinstance(value, timedelta) and value > timedelta(0):
            return None
        return (
            f"must be a positive datetime.timedelta, not {value!r}.",
            f"For example {example}.",
            number,
        )

    return validate


def _non_negative_duration(
    number: str, example: str
) -> Callable[[Any], tuple[str, str, str] | None]:
    def validate(value: Any) -> tuple[str, str, str] | None:
        if isinstance(value, timedelta) and value >= timedelta(0):
            return None
        return (
            f"must be a datetime.timedelta of zero or more, not {value!r}.",
            f"For example {example}.",
            number,
        )

    return validate


def _function(
    check_id: str, hint: str, *, optional: bool = False
) -> Callable[[Any], tuple[str, str, str] | None]:
    """A setting that names a function: the function, or its dotted path."""

    def validate(value: Any) -> tuple[str, str, str] | None:
        if value is None and optional:
            return None
        if isinstance(value, str):
            try:
                value = import_string(value)
            except ImportError as exc:
                return (f"cannot be imported: {exc}", hint, check_id)
        if callable(value):
            return None
        kind = "callable or None" if optional else "callable"
        return (f"must be {kind}, not {value!r}.", hint, check_id)

    return validate


_scope = _function(
    "E007",
    "Give a function request -> str, or its dotted path, e.g. 'django_idempotency.scopes.by_user'.",
)


def _max_response_bytes(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return None
    return (
        f"must be a positive int, not {value!r}.",
        "The largest response body stored for replay, e.g. 1_048_576 (1 MiB).",
        "E008",
    )


def _methods(value: Any) -> tuple[str, str, str] | None:
    hint = "For example ('POST', 'PUT', 'PATCH', 'DELETE'): GET, HEAD, OPTIONS and TRACE are safe."
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection) or not value:
        return (f"must be a non-empty list of HTTP methods, not {value!r}.", hint, "E009")
    bad = [
        method
        for method in value
        if not isinstance(method, str)
        or not HEADER_NAME.match(method)
        or method.upper() in SAFE_METHODS
    ]
    if bad:
        return (
            f"must name unsafe HTTP methods only; these are not: {', '.join(map(repr, bad))}.",
            hint,
            "E009",
        )
    return None


def _form_field(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, str) and value:
        return None
    return (
        f"must be a non-empty string, not {value!r}.",
        "The name of the hidden form input that carries the key, e.g. 'idempotency_key'.",
        "E010",
    )


def _problem_base_url(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, str):
        return None
    return (
        f"must be a string, not {value!r}.",
        "The URL that problem types are appended to in problem+json 'type' members.",
        "E012",
    )


def _session_locks(value: Any) -> tuple[str, str, str] | None:
    if value == "auto" or isinstance(value, bool):
        return None
    return (
        f"must be 'auto', True or False, not {value!r}.",
        "'auto' (the default) holds a session lock during atomic=False work unless the "
        "database sets DISABLE_SERVER_SIDE_CURSORS (transaction pooling); False: lease only.",
        "E015",
    )


def _encryption_keys(value: Any) -> tuple[str, str, str] | None:
    from django_idempotency import encryption

    problem = encryption.malformed_keys(value)
    if problem is not None:
        return (
            f"{problem}.",
            "Give a list of keys made by cryptography.fernet.Fernet.generate_key(), "
            "newest first, e.g. [env('IDEMPOTENCY_KEY_2'), env('IDEMPOTENCY_KEY_1')]; "
            "an empty list stores responses in the clear.",
            "E017",
        )
    if value and encryption.package_missing():
        return (
            "is set, but the 'cryptography' package is not installed: responses cannot "
            "be stored or replayed.",
            "pip install 'django-idempotency[encryption]'.",
            "E018",
        )
    return None


_redact = _function(
    "E019",
    "Give a function (response, stored) -> stored, or its dotted path, that returns "
    "dataclasses.replace(stored, body=...) without the fields you must not keep.",
    optional=True,
)


def _replay_cache(value: Any) -> tuple[str, str, str] | None:
    if value is None or (isinstance(value, str) and value in settings.CACHES):
        return None
    return (
        f"must be None or an alias in CACHES, not {value!r}.",
        "Name a cache of Django's cache framework, e.g. 'replays' with "
        "django.core.cache.backends.redis.RedisCache, or None to read every replay "
        "from the database.",
        "E020",
    )


def _databases(value: Any) -> tuple[str, str, str] | None:
    hint = (
        "List the aliases of DATABASES that hold idempotency records, e.g. "
        "['shard_a', 'shard_b'] beside a tenant router, or () for the router's write "
        "database."
    )
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        return (f"must be a list of database aliases, not {value!r}.", hint, "E022")
    unknown = [alias for alias in value if alias not in settings.DATABASES]
    if unknown:
        return (f"names databases that are not in DATABASES: {unknown!r}.", hint, "E022")
    from django_idempotency.models import IdempotencyRecord

    refused = [a for a in value if not router.allow_migrate_model(a, IdempotencyRecord)]
    if refused:
        return (
            f"names {refused!r}, where the database router does not migrate "
            "IdempotencyRecord: the table would not exist there.",
            "Let allow_migrate() return True for the django_idempotency app on every "
            "database that holds records.",
            "E022",
        )
    return None


def _conflict_retries(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return (
        f"must be an int of zero or more, not {value!r}.",
        "How many times an atomic attempt refused for a serialization failure or a "
        "deadlock runs again inside the request, e.g. 5; 0 turns it off.",
        "E016",
    )


VALIDATORS: dict[str, Callable[[Any], tuple[str, str, str] | None]] = {
    "HEADER": _header,
    "REQUIRED": _required,
    "TTL": _positive_duration("E004", "timedelta(hours=24)"),
    "LEASE": _positive_duration("E005", "timedelta(seconds=90), above your worker timeout"),
    "WAIT": _non_negative_duration("E006", "timedelta(0) or timedelta(seconds=2)"),
    "SCOPE": _scope,
    "MAX_RESPONSE_BYTES": _max_response_bytes,
    "METHODS": _methods,
    "FORM_FIELD": _form_field,
    "PURGE_GRACE": _non_negative_duration("E011", "timedelta(days=1)"),
    "PROBLEM_BASE_URL": _problem_base_url,
    "SESSION_LOCKS": _session_locks,
    "CONFLICT_RETRIES": _conflict_retries,
    "REPLAY_CACHE": _replay_cache,
    "DATABASES": _databases,
    "TOMBSTONE_TTL": _non_negative_duration("E021", "timedelta(days=30), or 0 for none"),
    "ENCRYPTION_KEYS": _encryption_keys,
    "REDACT": _redact,
}


def _check_durations(user: Mapping[str, Any]) -> list[CheckMessage]:
    lease = user.get("LEASE", DEFAULTS["LEASE"])
    ttl = user.get("TTL", DEFAULTS["TTL"])
    if not isinstance(lease, timedelta) or lease <= timedelta(0):
        return []
    messages: list[CheckMessage] = []
    if lease < SANE_WORKER_TIMEOUT:
        messages.append(
            Warning(
                f"IDEMPOTENCY['LEASE'] is {lease.total_seconds():g} s, shorter than a typical "
                "worker timeout (gunicorn's default is 30 s). A request still running when "
                "its lease ends can be taken over by a retry; in atomic=False views both "
                "attempts then act outside the database.",
                hint="Set LEASE above the longest time a guarded view may run, including "
                "your worker or proxy timeout.",
                id=PREFIX + "W003",
            )
        )
    if isinstance(ttl, timedelta) and timedelta(0) < ttl <= lease:
        messages.append(
            Warning(
                f"IDEMPOTENCY['TTL'] ({ttl}) is not longer than LEASE ({lease}): "
                + TTL_NOT_OVER_LEASE,
                hint="Keep TTL much longer than LEASE (defaults: 24 h and 90 s).",
                id=PREFIX + "W004",
            )
        )
    return messages


TTL_NOT_OVER_LEASE = (
    "a crashed attempt's record expires before its lease ends, so the retry starts a "
    "new operation instead of taking the crashed one over: an atomic=False view loses "
    "its recovery point and derived keys, and its work outside the database may run twice."
)


def view_duration_problem(*, ttl: Any, lease: Any) -> str | None:
    """Why a view's own ``ttl`` / ``lease`` cannot work, or ``None``.

    The rules of E004, E005 and W004, refused where the view is decorated: a value the
    view's author wrote next to the view is a bug there, not a deployment setting.
    """
    for name, value in (("ttl", ttl), ("lease", lease)):
        message = None if value is None else VALIDATORS[name.upper()](value)
        if message is not None:
            text, hint, _number = message
            return f"{name} {text} {hint}"
    if ttl is not None and lease is not None and ttl <= lease:
        return (
            f"ttl ({ttl}) is not longer than lease ({lease}): {TTL_NOT_OVER_LEASE} "
            "Keep ttl much longer than lease."
        )
    return None


_FRAMEWORK_APPS = frozenset({"django_idempotency", "contenttypes", "auth", "sessions", "admin"})


def check_records_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W001: the business writes can only commit with "done" on the same database
    (one records database; W008 checks a sharded project)."""
    from django_idempotency.conf import conf
    from django_idempotency.models import records_database

    if conf.DATABASES:
        return []
    records_db = records_database()
    elsewhere = sorted(
        model._meta.label
        for model in apps.get_models()
        if model._meta.app_label not in _FRAMEWORK_APPS
        and (router.db_for_write(model) or "default") != records_db
    )
    if not elsewhere:
        return []
    return [
        Warning(
            f"Idempotency records are written to {records_db!r}, but these models are "
            f"written elsewhere: {', '.join(elsewhere[:10])}"
            + (" ..." if len(elsewhere) > 10 else "")
            + ". Their writes cannot commit in one transaction with the record, so a "
            "crash between the two commits can run a side effect twice.",
            hint="Route IdempotencyRecord to the database of the models your guarded "
            "views write, or guard those views with atomic=False and derived keys.",
            id=PREFIX + "W001",
        )
    ]


def check_sharding(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W008: on a sharded project, a database the router lets business models live on
    but that holds no records: a guarded view writing there commits apart from its
    record. Test mirrors (replicas) are left out: nobody writes there."""
    from django_idempotency.conf import conf
    from django_idempotency.models import records_databases

    if not conf.DATABASES or _databases(list(conf.DATABASES)) is not None:
        return []  # unsharded (W001 covers it), or E022 already says what is wrong
    holding = set(records_databases())
    messages: list[CheckMessage] = []
    for alias, options in settings.DATABASES.items():
        if alias in holding or options.get("TEST", {}).get("MIRROR"):
            continue
        models = sorted(
            model._meta.label
            for model in apps.get_models()
            if model._meta.app_label not in _FRAMEWORK_APPS
            and router.allow_migrate_model(alias, model)
        )
        if models:
            messages.append(
                Warning(
                    f"Database {alias!r} holds no idempotency records (it is not in "
                    f"IDEMPOTENCY['DATABASES']), but the router lets these models live "
                    f"there: {', '.join(models[:10])}"
                    + (" ..." if len(models) > 10 else "")
                    + ". A guarded view writing them would commit apart from its record, "
                    "so a crash between the two commits can run a side effect twice.",
                    hint=f"Add {alias!r} to IDEMPOTENCY['DATABASES'] and let the router "
                    "migrate django_idempotency there, or keep guarded views off it.",
                    id=PREFIX + "W008",
                )
            )
    return messages


def check_atomic_requests(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """I001: explain what guarded views do under ``ATOMIC_REQUESTS``."""
    from django_idempotency.models import records_databases

    return [
        Info(
            f"ATOMIC_REQUESTS is on for {alias!r}, the idempotency records' database. "
            "Guarded views opt out of it there (like transaction.non_atomic_requests): "
            "the key's claim must commit on its own before the view runs, and the guard "
            "then wraps the view in its own transaction, so the view's writes still "
            "commit or roll back together, with the stored response. Where the opt-out "
            "cannot reach the URL's view (method_decorator on a handler, @api_view above "
            "@idempotent), the guard claims inside the request's transaction instead, as "
            "single_transaction=True does.",
            hint="Nothing to do. Code that relies on the request-wide transaction outside "
            "the view (middleware writes) runs in autocommit for guarded views.",
            id=PREFIX + "I001",
        )
        for alias in records_databases()
        if alias in connections and connections.settings[alias].get("ATOMIC_REQUESTS")
    ]


def check_guarded_views(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E014 and W004 per guarded URL: what only the wiring of one view shows."""
    from django_idempotency.conf import conf
    from django_idempotency.models import records_databases

    holding = records_databases()
    atomic = [
        a for a in holding if a in connections and connections.settings[a].get("ATOMIC_REQUESTS")
    ]
    messages: list[CheckMessage] = []
    for route, callback, view in _guarded_views():
        using = view.using if isinstance(view.using, str) else None
        if using is not None and using not in holding:
            messages.append(
                Error(
                    f"The view at '{route}' keeps its records on {using!r}, which is not "
                    f"among the databases that hold records ({', '.join(map(repr, holding))}):"
                    " every keyed request to it would fail.",
                    hint="Add it to IDEMPOTENCY['DATABASES'], or name one of those.",
                    obj=callback,
                    id=PREFIX + "E023",
                )
            )
        opted_in = [a for a in atomic if a not in getattr(callback, "_non_atomic_requests", ())]
        alias = opted_in[0] if opted_in else None
        if not view.mode.atomic and alias is not None:
            messages.append(
                Error(
                    f"The atomic=False view at '{route}' runs inside ATOMIC_REQUESTS on "
                    f"{alias!r}: its opt-out does not reach the URL's view (Django copies "
                    "only dispatch's attributes, DRF's @api_view none of the function's). "
                    "Its claim and checkpoints could not commit before it acts outside the "
                    "database, so every keyed request would be refused.",
                    hint="Put @idempotent above @api_view, decorate dispatch "
                    '(method_decorator(idempotent(atomic=False), name="dispatch")), or wrap '
                    "the URL's view in transaction.non_atomic_requests(using="
                    f"{alias!r}).",
                    obj=callback,
                    id=PREFIX + "E014",
                )
            )
        if view.ttl is None and view.lease is None:
            continue
        ttl, lease = view.ttl or conf.TTL, view.lease or conf.LEASE
        if timedelta(0) < ttl <= lease:
            messages.append(
                Warning(
                    f"The view at '{route}' keeps records for {ttl}, not longer than its "
                    f"lease ({lease}): {TTL_NOT_OVER_LEASE}",
                    hint="Give the view a ttl much longer than its lease.",
                    obj=callback,
                    id=PREFIX + "W004",
                )
            )
    return messages


def _guarded_views() -> Iterator[tuple[str, Any, Any]]:
    """``(route, URL callback, guard)`` for every guarded view in the URLconf."""
    if not getattr(settings, "ROOT_URLCONF", None):
        return
    try:
        patterns = get_resolver().url_patterns
    except Exception:  # reported by Django's own URL checks
        return
    yield from _walk(patterns, "")


def _walk(patterns: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, route)
            continue
        for view in _guards_of(entry.callback):
            yield route, entry.callback, view


def _guards_of(callback: Any) -> list[Any]:
    """The guards a URL's view runs: on the callback itself (``@idempotent`` on a function,
    or above ``@api_view``), on a class-based view's handlers (``method_decorator``
    copies it there), or on the function a handler calls (``@api_view``'s handler), and
    the guard an ``IdempotentMixin`` class builds from its attributes."""
    guard = getattr(callback, "idempotency_guard", None)
    if guard is not None:
        return [guard]
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is None:
        return []
    mixin_guard = getattr(view_class, "_class_guard", None)
    if mixin_guard is not None:
        return [mixin_guard()]
    found = []
    for name in getattr(view_class, "http_method_names", ()):
        guard = _guard_in(getattr(view_class, name, None), depth=2)
        if guard is not None and guard not in found:
            found.append(guard)
    return found


def _guard_in(function: Any, depth: int) -> Any:
    guard = getattr(function, "idempotency_guard", None)
    if guard is not None or depth == 0 or not inspect.isfunction(function):
        return guard
    for value in inspect.getclosurevars(function).nonlocals.values():
        guard = _guard_in(value, depth - 1)
        if guard is not None:
            return guard
    return None


def check_autocommit(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W006: without autocommit nothing commits the claim before the view runs."""
    from django_idempotency.models import records_databases

    return [
        Warning(
            f"AUTOCOMMIT is off for {alias!r}, the idempotency records' database. The "
            "default mode and atomic=False commit the key's claim before the view runs, "
            "which needs autocommit: guarded views in those modes refuse to run "
            "(RuntimeError). Only single_transaction=True works, inside a transaction "
            "your code commits.",
            hint="Leave AUTOCOMMIT on (Django's default) and use transaction.atomic() "
            "where you need a transaction, or guard every view with "
            "single_transaction=True.",
            id=PREFIX + "W006",
        )
        for alias in records_databases()
        if alias in connections and not connections.settings[alias].get("AUTOCOMMIT", True)
    ]


def check_urls(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W005: the 409 body's ``operation`` link and the status endpoint need the URLs."""
    if not getattr(settings, "ROOT_URLCONF", None):
        return []
    try:
        reverse(
            "django_idempotency:operation", kwargs={"pk": "00000000-0000-0000-0000-000000000000"}
        )
    except NoReverseMatch:
        return [
            Warning(
                "django_idempotency.urls is not included in your URLconf: 409 answers "
                "carry no 'operation' link and clients cannot ask for an operation's status.",
                hint='Add path("idempotency/", include("django_idempotency.urls")) to '
                "your urlpatterns.",
                id=PREFIX + "W005",
            )
        ]
    except Exception:  # the URLconf itself is broken: Django's own URL checks say so
        return []
    return []


def check_drf(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E013: ``IdempotentMixin`` needs Django REST framework installed."""
    if apps.is_installed("rest_framework"):
        return []
    _load_urlconf()  # views are imported with the URLconf
    if "django_idempotency.drf" not in sys.modules:
        return []
    from django_idempotency.drf import IdempotentMixin

    users = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in _subclasses(IdempotentMixin))
    used = f" by {', '.join(users[:10])}" if users else ""
    return [
        Error(
            f"django_idempotency.drf is imported{used}, but 'rest_framework' is not in "
            "INSTALLED_APPS: IdempotentMixin only works on Django REST framework views.",
            hint="pip install 'django-idempotency[drf]' and add 'rest_framework' to "
            "INSTALLED_APPS, or guard plain Django views with @idempotent.",
            id=PREFIX + "E013",
        )
    ]


def _load_urlconf() -> None:
    if not getattr(settings, "ROOT_URLCONF", None):
        return
    try:
        get_resolver().url_patterns  # noqa: B018  (imports the views)
    except Exception:  # reported by Django's own URL checks
        return


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found.add(sub)
        found |= _subclasses(sub)
    return found


def check_time_zone_tables(
    app_configs: Any = None, databases: Collection[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W007: MySQL/MariaDB without time-zone tables cannot truncate dates in TIME_ZONE.

    It asks the database, so it runs only for the databases named (``migrate``,
    ``check --database``), like Django's own database checks.
    """
    from django_idempotency.models import records_databases

    if not databases or not apps.is_installed("django.contrib.admin"):
        return []
    from django_idempotency.admin import dates_truncate

    zone = settings.TIME_ZONE or "UTC"
    return [
        Warning(
            f"The database {alias!r} (MySQL/MariaDB) has no time-zone tables, so it "
            f"cannot convert dates to TIME_ZONE {zone!r} (CONVERT_TZ() answers NULL). "
            "The admin of idempotency records leaves its date drill-down out; a "
            "drill-down in the URL still filters.",
            hint="Load the tables into the server's mysql schema, then restart: "
            "mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb -u root mysql "
            "(MariaDB) or mysql_tzinfo_to_sql /usr/share/zoneinfo | mysql -u root mysql "
            "(MySQL).",
            id=PREFIX + "W007",
        )
        for alias in records_databases()
        if alias in databases and not dates_truncate(alias, zone)
    ]
