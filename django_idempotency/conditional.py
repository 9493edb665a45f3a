"""Conditional updates: ``If-Match`` against a version or ETag, for competing writers.

Idempotency keys make one client's *retries* safe. Two *different* clients editing
the same resource need the other tool (RFC 9110 section 13.1.1, RFC 6585): every
representation carries an ``ETag``; an update must send it back in ``If-Match``; the
server writes only if the resource still has that ETag, and bumps it in the same
transaction. Otherwise the later writer would silently overwrite the earlier one
(the "lost update").

- no ``If-Match`` on an unsafe request: ``428 Precondition Required``;
- an ``If-Match`` that does not match: ``412 Precondition Failed`` with the current
  ``ETag``, so the client can refetch, merge and retry;
- a match: the write runs, and the version bump commits with it or not at all.

Comparison is strong: a weak tag (``W/"3"``) never matches; ``*`` matches any
current representation. The check and the bump are one conditional
``UPDATE ... SET version = version + 1 WHERE pk = %s AND version IN (...)`` (with a
version field) or a ``select_for_update`` of the row (with an ``etag`` callable), so
of N concurrent writers holding the same ETag exactly one wins.

Framework-agnostic core (``parse_if_match``, ``check_and_bump``) plus
``conditional_update`` for plain Django views; ``django_idempotency.drf`` has
``ConditionalUpdateMixin`` for DRF. Use it under ``@idempotent`` (outermost) so a
retried update with the same Idempotency-Key replays its first answer instead of
failing the precondition it already changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models, router, transaction
from django.db.models import F
from django.http import Http404, HttpResponse, HttpResponseBase

from django_idempotency.problems import (
    IF_MATCH_INVALID,
    PRECONDITION_FAILED,
    PRECONDITION_REQUIRED,
    Problem,
)

__all__ = [
    "Applied",
    "IfMatch",
    "InvalidIfMatch",
    "Missing",
    "PreconditionError",
    "PreconditionFailed",
    "PreconditionRequired",
    "check_and_bump",
    "conditional_update",
    "current_etag",
    "parse_if_match",
    "quote_etag",
]

V = TypeVar("V", bound=Callable[..., Any])
_EtagFunction = Callable[[Any], str]
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class IfMatch:
    """A parsed ``If-Match``: ``*`` or the strong entity tags listed (weak ones dropped)."""

    any: bool
    tags: frozenset[str]

    def matches(self, etag: str | None) -> bool:
        """Strong comparison against the current ETag (``None``: no representation)."""
        if etag is None:
            return False
        return self.any or etag in self.tags


_ANY = IfMatch(any=True, tags=frozenset())


class PreconditionError(Exception):
    """The request's precondition failed; ``response()`` is the problem+json answer.

    The response carries ``exception = True``, like a DRF error response, so that
    ``@idempotent`` / ``IdempotentMixin`` treat it as "nothing ran": it is not stored
    under the Idempotency-Key, and the client may retry with a fresh ETag.
    """

    problem: Problem = PRECONDITION_FAILED

    def __init__(self, detail: str, etag: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.etag = etag

    def response(self) -> HttpResponse:
        headers = {"ETag": self.etag} if self.etag else {}
        members = {"etag": self.etag} if self.etag else {}
        response = self.problem.response(self.detail, headers=headers, **members)
        response.exception = True  # type: ignore[attr-defined]
        return response


class PreconditionFailed(PreconditionError):
    """The ``If-Match`` names another version: ``412``, with the current ``ETag``."""

    problem = PRECONDITION_FAILED


class PreconditionRequired(PreconditionError):
    """An unsafe request came without ``If-Match`` where one is required: ``428``."""

    problem = PRECONDITION_REQUIRED


class InvalidIfMatch(PreconditionError):
    """``If-Match`` is neither ``*`` nor a list of entity tags: ``400``."""

    problem = IF_MATCH_INVALID


def parse_if_match(value: str | None) -> IfMatch | None:
    """Parse ``If-Match`` (RFC 9110 section 13.1.1); ``None`` when the header is absent.

    Raises ``InvalidIfMatch`` for anything that is not ``*`` or a comma-separated
    list of entity tags.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if text == "*":
        return _ANY
    tags: set[str] = set()
    rest = text
    while rest:
        weak = rest.startswith("W/")
        if weak:
            rest = rest[2:]
        if not rest.startswith('"'):
            raise InvalidIfMatch(_INVALID)
        end = rest.find('"', 1)
        if end < 0:
            raise InvalidIfMatch(_INVALID)
        tag = rest[: end + 1]
        if any(char < "\x21" or char == "\x7f" for char in tag[1:-1]):
            raise InvalidIfMatch(_INVALID)
        if not weak:
            tags.add(tag)
        rest = rest[end + 1 :].lstrip(" \t")
        if rest.startswith(","):
            rest = rest[1:].lstrip(" \t,")
        elif rest:
            raise InvalidIfMatch(_INVALID)
    if not tags and "W/" not in text:
        raise InvalidIfMatch(_INVALID)
    return IfMatch(any=False, tags=frozenset(tags))


_INVALID = 'If-Match must be "*" or a list of entity tags such as "3" (with the quotes).'


def quote_etag(opaque: object) -> str:
    """``"opaque"``: a strong ETag; ``opaque`` must not contain quotes or spaces."""
    text = str(opaque)
    if '"' in text or any(char < "\x21" or char == "\x7f" for char in text):
        raise ValueError(f"An ETag value cannot contain quotes or spaces: {text!r}")
    return f'"{text}"'


@dataclass(frozen=True)
class Applied:
    """The precondition held and the version is bumped (not yet committed)."""

    etag: str | None
    version: Any = None


@dataclass(frozen=True)
class Missing:
    """No row matches the lookup."""


def check_and_bump(
    queryset: models.QuerySet[Any],
    lookup: dict[str, Any],
    if_match: IfMatch,
    *,
    version_field: str | None = "version",
    etag: _EtagFunction | None = None,
) -> Applied | Missing:
    """Check ``if_match`` against the row and bump its version, atomically.

    Call it inside the transaction that makes the write, before the write. Raises
    ``PreconditionFailed`` (with the current ETag) when the condition is false.
    With ``version_field`` the check *is* the bump: one conditional UPDATE that a
    competing writer blocks on and then fails. With ``etag`` the row is locked with
    ``select_for_update`` and its ETag computed and compared under that lock.
    """
    if etag is not None:
        return _check_locked(queryset, lookup, if_match, etag)
    if version_field is None:
        raise ImproperlyConfigured("Give a version_field or an etag callable.")
    rows = queryset.filter(**lookup)
    if not if_match.any:
        versions = _versions(queryset.model, version_field, if_match.tags)
        rows = rows.filter(**{f"{version_field}__in": versions})
    if rows.update(**{version_field: F(version_field) + 1}):
        version = queryset.filter(**lookup).values_list(version_field, flat=True).first()
        return Applied(quote_etag(version), version)
    current = queryset.filter(**lookup).values_list(version_field, flat=True).first()
    if current is None:
        return Missing()
    raise _failed(quote_etag(current))


def _check_locked(
    queryset: models.QuerySet[Any], lookup: dict[str, Any], if_match: IfMatch, etag: _EtagFunction
) -> Applied | Missing:
    instance = queryset.select_for_update().filter(**lookup).first()
    if instance is None:
        return Missing()
    current = quote_etag(etag(instance))
    if not if_match.matches(current):
        raise _failed(current)
    return Applied(current)


def _versions(model: type[models.Model], field_name: str, tags: Collection[str]) -> list[Any]:
    field = model._meta.get_field(field_name)
    if not isinstance(field, models.IntegerField):
        raise ImproperlyConfigured(
            f"{model._meta.label}.{field_name} must be an integer field to serve as a "
            "version; give an etag callable for anything else."
        )
    versions = []
    for tag in tags:
        try:
            versions.append(field.to_python(tag[1:-1]))
        except ValidationError:
            continue
    return versions


def _failed(current: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"The resource was changed by someone else; its current ETag is {current}. "
        "Fetch it again, reapply your change, and send If-Match with the new ETag.",
        current,
    )


def current_etag(
    queryset: models.QuerySet[Any],
    lookup: dict[str, Any],
    *,
    version_field: str | None = "version",
    etag: _EtagFunction | None = None,
) -> str | None:
    """The resource's ETag now, ``None`` if it does not exist."""
    if etag is not None:
        instance = queryset.filter(**lookup).first()
        return None if instance is None else quote_etag(etag(instance))
    if version_field is None:
        raise ImproperlyConfigured("Give a version_field or an etag callable.")
    version = queryset.filter(**lookup).values_list(version_field, flat=True).first()
    return None if version is None else quote_etag(version)


def precondition(header: str | None, *, required: bool, etag: Callable[[], str | None]) -> IfMatch:
    """The ``If-Match`` to enforce; raises ``PreconditionRequired`` when it is missing."""
    if_match = parse_if_match(header)
    if if_match is not None:
        return if_match
    if required:
        current = etag()
        raise PreconditionRequired(
            "This resource changes only with a conditional request: send If-Match with "
            "the ETag from your last read"
            + (f" (currently {current})." if current else ".")
            + " This keeps two clients from overwriting each other's changes.",
            current,
        )
    return _ANY  # unconditional, but the version still moves


_Source = type[models.Model] | models.QuerySet[Any] | Callable[[Any], models.QuerySet[Any]]


def conditional_update(
    source: _Source,
    *,
    version_field: str | None = "version",
    etag: _EtagFunction | None = None,
    lookup_field: str = "pk",
    lookup_url_kwarg: str | None = None,
    required: bool = True,
    methods: Collection[str] = _UNSAFE_METHODS,
) -> Callable[[V], V]:
    """Guard a plain Django detail view with ``If-Match`` / ``ETag``.

    ``source`` is the model, a queryset, or ``callable(request) -> queryset`` (to
    limit rows to the user's); the object is found by ``lookup_field`` from the URL
    kwarg ``lookup_url_kwarg`` (default: the same name). ``version_field`` names an
    integer field that every write bumps; or give ``etag=callable(instance) -> str``
    instead (the row is then locked while compared). Unsafe ``methods`` need a
    matching ``If-Match`` (or none at all when ``required=False``); the version bump,
    the view's writes and a 2xx answer commit together, and any 4xx/5xx answer or
    exception rolls all of them back. The view loads the object itself, inside that
    transaction; a missing object is a 404. 2xx answers to GET and HEAD and to the
    update itself carry the current ``ETag``.

    Stack ``@idempotent`` above it, never below: the replay check must come first.
    """
    verbs = frozenset(method.upper() for method in methods)

    def decorate(view: V) -> V:
        if iscoroutinefunction(view):
            raise ImproperlyConfigured("conditional_update supports synchronous views only.")
        if hasattr(view, "idempotency_guard"):
            raise ImproperlyConfigured(
                f"Put @idempotent above @conditional_update on {view.__name__}: the "
                "Idempotency-Key replay must be checked before the precondition."
            )

        @functools.wraps(view)
        def wrapper(request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
            queryset = _queryset(source, request)
            lookup = {lookup_field: kwargs[lookup_url_kwarg or lookup_field]}

            def etag_now() -> str | None:
                return current_etag(queryset, lookup, version_field=version_field, etag=etag)

            if request.method not in verbs:
                response: HttpResponseBase = view(request, *args, **kwargs)
                if request.method in ("GET", "HEAD"):
                    _set_etag(response, etag_now)
                return response
            try:
                if_match = precondition(
                    request.headers.get("If-Match"), required=required, etag=etag_now
                )
            except PreconditionError as error:
                return error.response()
            database = router.db_for_write(queryset.model)
            try:
                with transaction.atomic(using=database):
                    outcome = check_and_bump(
                        queryset, lookup, if_match, version_field=version_field, etag=etag
                    )
                    if isinstance(outcome, Missing):
                        raise Http404
                    response = view(request, *args, **kwargs)
                    if failed(response):
                        transaction.set_rollback(True, using=database)
                    elif request.method != "DELETE":
                        _set_etag(response, etag_now)
            except PreconditionError as error:
                return error.response()
            return response

        return wrapper  # type: ignore[return-value]

    return decorate


def failed(response: HttpResponseBase) -> bool:
    """A 4xx/5xx or a DRF error response: its writes, and the version bump, roll back."""
    return response.status_code >= 400 or bool(getattr(response, "exception", False))


def _queryset(source: _Source, request: Any) -> models.QuerySet[Any]:
    queryset: models.QuerySet[Any]
    if isinstance(source, models.QuerySet):
        queryset = source.all()
    elif isinstance(source, type) and issubclass(source, models.Model):
        queryset = source._default_manager.all()
    else:
        make: Callable[[Any], models.QuerySet[Any]] = source  # type: ignore[assignment]
        queryset = make(request)
    return queryset


def _set_etag(response: HttpResponseBase, etag: Callable[[], str | None]) -> None:
    if 200 <= response.status_code < 300 and not response.has_header("ETag"):
        value = etag()
        if value is not None:
            response["ETag"] = value
