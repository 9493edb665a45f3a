"""Operation-status endpoint: what became of my request with this key?

It answers only inside the caller's scope, computed by the same scope function as the
guarded views (``IDEMPOTENCY["SCOPE"]``), and gives one identical 404 for a record that
does not exist, belongs to another scope or has expired, so nobody can probe for other
scopes' keys or operation ids. Records are read from the records' write database,
never a replica: a stale "no such operation" would send a client to retry work that
is running.

Session users are recognised by Django's ``AuthenticationMiddleware``; API clients by
DRF's ``DEFAULT_AUTHENTICATION_CLASSES`` (token, basic, ...) when DRF is installed, so
a token-authenticated client sees the records its guarded DRF views created.

Nothing here changes state, so the views are exempt from CSRF: a POST or DELETE gets
the documented ``405`` problem, not ``CsrfViewMiddleware``'s HTML ``403``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.db import transaction
from django.db.models import BooleanField, ExpressionWrapper
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from django_idempotency import clock, keys, problems, responses
from django_idempotency.guard import opt_out_of_atomic_requests
from django_idempotency.models import (
    IdempotencyRecord,
    IdempotencyRecordQuerySet,
    expired_at,
    records_database,
    tombstone_at,
)

ALLOWED_METHODS = ("GET", "HEAD")
ALLOW = "GET, HEAD, OPTIONS"
FIELDS = (
    "id",
    "key",
    "status",
    "attempts",
    "created_at",
    "completed_at",
    "expires_at",
    "locked_until",
    "response_status",
)
NOT_FOUND_DETAIL = "No operation with this id or key exists in your scope, or it has expired."

View = Callable[..., HttpResponse]


def status_view(view: View) -> View:
    """GET and HEAD, OPTIONS answered ``204`` with ``Allow``, anything else ``405``;
    never cached, CSRF-exempt (read-only), outside ``ATOMIC_REQUESTS`` on the default
    and the records' database (resolved per request, like the guarded views)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method in ALLOWED_METHODS:
            response = view(request, *args, **kwargs)
        elif request.method == "OPTIONS":
            response = HttpResponse(status=204)
            response["Allow"] = ALLOW
        else:
            response = problems.OPERATION_METHOD_NOT_ALLOWED.response(
                f"The operation-status endpoint answers GET and HEAD, not {request.method}.",
                headers={"Allow": ALLOW},
            )
        response["Cache-Control"] = "no-store"
        return response

    opted_out: View = opt_out_of_atomic_requests(
        transaction.non_atomic_requests(csrf_exempt(wrapper))
    )
    return opted_out


@status_view
def operation(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """``GET <prefix>/operations/<uuid>/``: the operation by its id."""
    caller = authenticated(request)
    if isinstance(caller, HttpResponse):
        return caller
    scope = keys.compute_scope(caller)
    return describe(records(caller, scope).filter(pk=pk, scope=scope))


@status_view
def operation_by_key(request: HttpRequest) -> HttpResponse:
    """``GET <prefix>/operations/?key=<key>``: the operation by the key the client sent.

    ``key`` is the header's value (URL-encoded), read by ``keys.parse_key`` like the
    header of a guarded request: a key a guarded view would refuse is refused here too,
    never looked up.
    """
    caller = authenticated(request)
    if isinstance(caller, HttpResponse):
        return caller
    values = request.GET.getlist("key")
    if not values:
        return problems.KEY_MISSING.response(
            "Name the operation with ?key=<the Idempotency-Key you sent>."
        )
    try:
        if len(values) > 1:
            raise keys.InvalidKey("Send exactly one key.")
        key = keys.parse_key(values[0])
    except keys.InvalidKey as exc:
        return responses.invalid_key(str(exc))
    scope = keys.compute_scope(caller)
    return describe(records(caller, scope, key).filter(key=key, scope=scope))


def records(request: Any, scope: str, key: str | None = None) -> IdempotencyRecordQuerySet:
    """The caller's records, on the database the router names for this request (the
    guard's hints, without the key when looked up by id): on a sharded project, the
    caller's tenant's, never another shard where the same scope may be someone else."""
    alias = records_database(request=request, scope=scope, key=key)
    found: IdempotencyRecordQuerySet = IdempotencyRecord.objects.using(alias)
    return found


def describe(candidates: IdempotencyRecordQuerySet) -> HttpResponse:
    now = clock.Now()
    tombstone = ExpressionWrapper(tombstone_at(now), output_field=BooleanField())
    found = candidates.exclude(expired_at(now)).annotate(tombstone=tombstone)
    found = found.values(*FIELDS, "tombstone").first()
    if found is None:
        return problems.OPERATION_NOT_FOUND.response(NOT_FOUND_DETAIL)
    found["id"] = str(found["id"])
    return JsonResponse(found)


def authenticated(request: HttpRequest) -> Any:
    """The request the scope is computed on; a 401 problem for bad API credentials.

    A session user comes from ``AuthenticationMiddleware``. When the Django user is
    anonymous and DRF is installed, DRF's default authenticators get their turn, as
    they would in a DRF view: a valid token or basic credential becomes the user,
    invalid credentials get 401 instead of silently seeing the anonymous scope.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return request
    if not apps.is_installed("rest_framework"):
        return request
    try:
        from rest_framework.exceptions import APIException
        from rest_framework.request import Request
        from rest_framework.settings import api_settings
    except ImportError:
        return request
    classes: list[Any] = list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    authenticators = [auth() for auth in classes]
    api_request = Request(request, authenticators=authenticators)
    try:
        api_request.user  # noqa: B018  (runs the authenticators)
    except APIException as exc:
        challenges = [auth.authenticate_header(api_request) for auth in authenticators]
        challenge = next((header for header in challenges if header), None)
        return problems.OPERATION_UNAUTHENTICATED.response(
            str(exc.detail), headers={"WWW-Authenticate": challenge} if challenge else None
        )
    return api_request
