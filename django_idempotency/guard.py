"""The HTTP side shared by the decorator and the DRF mixin.

It reads the key, scope and fingerprint of a request, asks the engine to run the view
once, and turns the engine's outcome into a response. It knows nothing of DRF.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.db import connections, transaction
from django.db.models import Q
from django.http import HttpResponseBase

from django_idempotency import (
    checks,
    clock,
    engine,
    keys,
    models,
    operation,
    replay_cache,
    responses,
    signals,
)
from django_idempotency.conf import conf

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Guard", "GuardOptions"]

_KeyFunction = Callable[[Any], "str | None"]
_FIRST_POLL = 0.05
T = TypeVar("T")


class GuardOptions(TypedDict, total=False):
    """The options of ``@idempotent`` and ``Guard``, in one place for both.

    Every option has a default (docs/reference/api.md), so none is required. The DRF
    mixin sets those that are not hooks as ``idempotency_<option>`` attributes.
    """

    required: bool | None
    atomic: bool
    single_transaction: bool
    key: _KeyFunction | None
    fingerprint: Callable[[Any], str] | None
    scope: Callable[[Any], str] | None
    ttl: timedelta | None
    lease: timedelta | None
    methods: Collection[str] | None
    using: str | Callable[[Any], str | None] | None


class Guard:
    """One guarded view's options, validated once where the view is decorated.

    ``@idempotent`` and ``IdempotentMixin.get_idempotency_guard()`` build one from
    ``GuardOptions``; a view carries it as ``view.idempotency_guard``. Only the
    constructor is public: how it runs a request may change.
    """

    def __init__(self, **options: Unpack[GuardOptions]) -> None:
        unknown = sorted(options.keys() - GuardOptions.__optional_keys__)
        if unknown:
            raise TypeError(f"Unknown idempotency option(s): {', '.join(unknown)}.")
        self.mode = _mode_of(options)
        ttl, lease = options.get("ttl"), options.get("lease")
        problem = checks.view_duration_problem(ttl=ttl, lease=lease)
        if problem is not None:
            raise ImproperlyConfigured(problem)
        self.required = options.get("required")
        self.key = options.get("key")
        self.fingerprint = options.get("fingerprint") or keys.fingerprint
        self.scope = options.get("scope")
        self.ttl = ttl
        self.lease = lease
        methods = options.get("methods")
        self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
        self.using = options.get("using")
        if self.using is not None and not (isinstance(self.using, str) or callable(self.using)):
            raise ImproperlyConfigured(
                f"using={self.using!r} must name the records' database: an alias of "
                "DATABASES, or a callable of the request returning one (or None for the "
                "router's)."
            )

    def applies(self, request: Any) -> bool:
        methods = self.methods if self.methods is not None else conf.METHODS
        return request.method in methods

    def policy(self) -> operation.Policy:
        return operation.Policy(
            mode=self.mode,
            lease=self.lease or conf.LEASE,
            ttl=self.ttl or conf.TTL,
            wait=conf.WAIT,
        )

    def intent(self, request: Any) -> operation.Intent | HttpResponseBase | None:
        """The request's intent; a 400 response for a bad key; ``None`` to pass through."""
        try:
            earlier_keys: tuple[str, ...] = ()
            if self.key is not None:
                key = self.key(request)
                if key is not None:
                    earlier_keys = keys.earlier_forms(key)
                    key = keys.parse_key(str(key))
            else:
                key = keys.parse_key(keys.sent_key(request))
            if key is None:
                required = conf.REQUIRED if self.required is None else self.required
                return responses.missing_key() if required else None
            scope, earlier_scopes = keys.scope_forms(request, self.scope)
            database = self.database(request, scope, key)
            if earlier_keys or earlier_scopes:
                scope, key = _held(database, scope, key, earlier_scopes, earlier_keys)
            fingerprint, earlier = keys.fingerprints(str(self.fingerprint(request)))
            return operation.Intent(
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                method=request.method,
                route=keys.route_of(request),
                earlier=earlier,
                database=database,
            )
        except keys.InvalidKey as exc:
            return responses.invalid_key(str(exc))
        except RequestDataTooBig:
            return responses.too_large()

    def database(self, request: Any, scope: str, key: str) -> str:
        """The records' database for this request: the view's ``using`` (an alias, or a
        callable of the request answering one or ``None``), else the router's, asked with
        the request, scope and key as hints."""
        using = self.using(request) if callable(self.using) else self.using
        return models.records_database(using, request=request, scope=scope, key=key)

    def run(self, request: Any, view: Callable[[], HttpResponseBase]) -> HttpResponseBase:
        intent = self.intent(request)
        if intent is None:
            return passthrough(request, view)
        if isinstance(intent, HttpResponseBase):
            return intent
        cached = _cached_replay(intent)
        if cached is not None:
            return cached
        policy = self.policy()
        deadline = time.monotonic() + policy.wait.total_seconds()
        pause = _FIRST_POLL
        while True:
            outcome = self._execute(request, intent, policy, view)
            remaining = deadline - time.monotonic()
            if not isinstance(outcome, operation.InProgress) or remaining <= 0:
                return self.respond(outcome)
            time.sleep(min(pause, remaining))
            pause *= 2

    async def arun(self, request: Any, view: Callable[[], HttpResponseBase]) -> HttpResponseBase:
        """The async twin: claim, view and finalize run as one thread-sensitive call.

        ``view`` is a sync callable (the async view wrapped in ``async_to_sync``), so
        the view's ORM calls land on the same thread and inside the same transaction.
        """
        intent = await sync_to_async(self.intent, thread_sensitive=True)(request)
        if intent is None:
            return await sync_to_async(passthrough, thread_sensitive=True)(request, view)
        if isinstance(intent, HttpResponseBase):
            return intent
        cached = await sync_to_async(_cached_replay, thread_sensitive=True)(intent)
        if cached is not None:
            return cached
        policy = self.policy()
        deadline = time.monotonic() + policy.wait.total_seconds()
        pause = _FIRST_POLL
        execute = sync_to_async(self._execute, thread_sensitive=True)
        while True:
            outcome = await execute(request, intent, policy, view)
            remaining = deadline - time.monotonic()
            if not isinstance(outcome, operation.InProgress) or remaining <= 0:
                return self.respond(outcome)
            await asyncio.sleep(min(pause, remaining))
            pause *= 2

    def _execute(
        self,
        request: Any,
        intent: operation.Intent,
        policy: operation.Policy,
        view: Callable[[], HttpResponseBase],
    ) -> operation.Outcome[HttpResponseBase]:
        def work(current: operation.Operation) -> HttpResponseBase:
            request.idempotency = current
            django_request = getattr(request, "_request", None)
            if django_request is not None:
                django_request.idempotency = current
            return view()

        with _requested_transactions(request, but=intent.database):
            return engine.execute(intent, policy, work, responses.capture)

    def respond(self, outcome: operation.Outcome[HttpResponseBase]) -> HttpResponseBase:
        if isinstance(outcome, operation.Executed):
            if outcome.record is None:
                return outcome.value
            replay_cache.remember(outcome.record)
            return responses.told_expiry(outcome.value, outcome.record, self.ttl or conf.TTL)
        if isinstance(outcome, operation.Replay):
            replay_cache.remember(outcome.record)
            return responses.replay(outcome.record)
        if isinstance(outcome, operation.InProgress):
            return responses.in_progress(outcome.record, outcome.retry_after)
        if isinstance(outcome, operation.Mismatch):
            return responses.mismatch(outcome.record)
        if isinstance(outcome, operation.Expired):
            return responses.key_expired(outcome.record)
        if isinstance(outcome, operation.Conflict):
            return responses.busy(outcome.reason, outcome.retry_after)
        return responses.unavailable(outcome.retry_after)


def _cached_replay(intent: operation.Intent) -> HttpResponseBase | None:
    """The replay from ``REPLAY_CACHE``, sent the signal a replay read from the database
    gets; ``None`` to ask the database."""
    record = replay_cache.lookup(intent)
    if record is None:
        return None
    if signals.operation_replayed.receivers:
        signals.operation_replayed.send(
            sender=models.IdempotencyRecord, record=record, scope=intent.scope, key=intent.key
        )
    return responses.replay(record)


def _held(
    database: str,
    scope: str,
    key: str,
    earlier_scopes: tuple[str, ...],
    earlier_keys: tuple[str, ...],
) -> tuple[str, str]:
    """The ``(scope, key)`` a live record holds among this intent's earlier forms, else
    the current one: records are found by equality, and one made before a key rotation
    (or by the previous version, for ``payload_hash``) holds an earlier form.

    One read, only for ``Keyed`` scopes and keys. Keys are checked for syntax like the
    current one; a form that would be refused is skipped.
    """
    forms = []
    for earlier_key in earlier_keys:
        try:
            forms.append((scope, keys.fit_key(earlier_key)))
        except keys.InvalidKey:
            continue
    forms += [(other, k) for other in earlier_scopes for k in (key, *(f[1] for f in forms))]
    if not forms:
        return scope, key
    match = Q()
    for form_scope, form_key in forms:
        match |= Q(scope=form_scope, key=form_key)
    found = (
        models.IdempotencyRecord.objects.using(database)
        .filter(match)
        .exclude(models.expired_at(clock.Now()))
        .values_list("scope", "key")
        .first()
    )
    return found if found is not None else (scope, key)


def _mode_of(options: GuardOptions) -> engine.Mode:
    """The engine's mode the options choose (adding a mode adds its option here)."""
    atomic = options.get("atomic", True)
    if options.get("single_transaction", False):
        if not atomic:
            raise ImproperlyConfigured(
                "single_transaction=True runs the view inside the claim's transaction; "
                "it cannot be combined with atomic=False."
            )
        return engine.Mode.SINGLE_TRANSACTION
    return engine.Mode.TWO_PHASE if atomic else engine.Mode.NON_ATOMIC


def passthrough(request: Any, view: Callable[[], T]) -> T:
    """Run a request the guard lets through as ``ATOMIC_REQUESTS`` would have.

    Guarded views are opted out of ``ATOMIC_REQUESTS`` so that the claim can commit on
    its own; a request that is not guarded (a safe method, no key where none is
    required) must not lose the transaction the project asked for, unless the project
    itself marked the view ``non_atomic_requests``.
    """
    request.idempotency = operation.Unguarded()
    with _requested_transactions(request):
        return view()


@contextlib.contextmanager
def _requested_transactions(request: Any, but: str | None = None) -> Iterator[None]:
    """The ``ATOMIC_REQUESTS`` transactions the guard's opt-out kept from the view,
    given back on every records database but ``but``, the one its claim commits on."""
    with contextlib.ExitStack() as stack:
        for alias in models.records_databases():
            connection = connections[alias]
            if (
                alias != but
                and connection.settings_dict.get("ATOMIC_REQUESTS")
                and not connection.in_atomic_block  # the opt-out did not reach Django
                and not _opted_out(request, alias)
            ):
                stack.enter_context(transaction.atomic(using=alias))
        yield


def _opted_out(request: Any, alias: str) -> bool:
    view = getattr(getattr(request, "resolver_match", None), "func", None)
    return alias in set(getattr(view, "_non_atomic_requests", ()))  # real members only


class _RecordsDatabase(set[str]):
    """``view._non_atomic_requests`` that also names every database holding records.

    Resolved per request, because the database router is not known when a view is
    decorated at import time, nor which database a request's record goes to before
    the request comes. Without it the claim could not commit on its own under
    ``ATOMIC_REQUESTS``; the guard gives the others back (``_requested_transactions``).
    """

    def __contains__(self, alias: object) -> bool:
        return alias in models.records_databases() or super().__contains__(alias)


def opt_out_of_atomic_requests(view: Any) -> Any:
    view._non_atomic_requests = _RecordsDatabase(getattr(view, "_non_atomic_requests", ()))
    return view
