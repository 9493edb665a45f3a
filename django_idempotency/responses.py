"""HTTP in and out: capturing a response for storage, replaying it, problem+json errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils.http import http_date

from django_idempotency import clock, encryption, problems
from django_idempotency.conf import conf
from django_idempotency.models import IdempotencyRecord
from django_idempotency.operation import Stored

__all__ = ["accepted"]

_logger = logging.getLogger("django_idempotency")

REPLAYED_HEADER = "Idempotent-Replayed"
#: Until when the key is remembered (an HTTP-date, as ``Expires`` and ``Sunset`` give
#: one): docs/reference/http.md says why a date and not a TTL in seconds.
_EXPIRES_HEADER = "Idempotency-Expires"
AnyResponse = TypeVar("AnyResponse", bound=HttpResponseBase)
_STORED_HEADERS = frozenset(
    {"content-type", "location", "content-location", "etag", "last-modified", "link"}
    # They describe the stored bytes: gzip bytes replayed without their encoding are garbage.
    | {"content-encoding", "content-language", "content-disposition"}
    # A replay is never more cacheable than the original: its caching rules go with it,
    # and Vary with them, or a cache could keep a replay as the answer to every variant.
    | {"cache-control", "expires", "pragma", "vary"}
)
# Replays of records stored without Cache-Control (an original without one, or a record
# of an older version that did not store it): the stricter answer is always safe.
_REPLAY_CACHE_CONTROL = "no-store"
# Never stored, even when they start with X-: they belong to one client or one hop.
_NEVER_STORED = frozenset(
    {
        "set-cookie",
        "date",
        "authorization",
        "www-authenticate",
        "proxy-authenticate",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-csrftoken",
    }
)


def capture(response: HttpResponseBase, max_bytes: int | None = None) -> Stored | None:
    """What to store of the view's response, or ``None`` if the attempt failed.

    A 5xx or a DRF error response (``response.exception``) means the work failed:
    nothing is stored and the writes roll back. A body over ``MAX_RESPONSE_BYTES``
    (or a stream longer than that, or any asynchronous stream) is not stored: the
    operation still completes and a replay answers ``303 See Other`` instead of a
    truncated body. A short synchronous stream is stored and replayed byte for byte.

    Then ``REDACT`` may drop what must not be kept, and with ``ENCRYPTION_KEYS`` the
    result is encrypted: the client still gets the view's own response, untouched.
    """
    if response.status_code >= 500 or getattr(response, "exception", False):
        return None
    if callable(getattr(response, "render", None)) and not getattr(response, "is_rendered", True):
        response.render()  # type: ignore[attr-defined]
    limit = conf.MAX_RESPONSE_BYTES if max_bytes is None else max_bytes
    headers = storable_headers(response)
    if isinstance(response, StreamingHttpResponse):
        body = _drain(response, limit)
    else:
        content = response.content  # type: ignore[attr-defined]
        body = bytes(content) if len(content) <= limit else None
    stored = Stored(status=response.status_code, headers=headers, body=body)
    return encryption.seal(_redacted(response, stored, limit))


def _redacted(response: HttpResponseBase, stored: Stored, limit: int) -> Stored:
    """``REDACT(response, stored)``: the hook sees the plaintext and returns what to keep."""
    redact = conf.REDACT
    if redact is None:
        return stored
    kept = redact(response, stored)
    if not isinstance(kept, Stored):
        raise TypeError(
            f"IDEMPOTENCY['REDACT'] must return a Stored (dataclasses.replace(stored, ...)), "
            f"not {type(kept).__name__}."
        )
    body = None if kept.body is None else bytes(kept.body)
    if body is not None and len(body) > limit:
        body = None
    return Stored(status=stored.status, headers=dict(kept.headers), body=body)


def _drain(response: StreamingHttpResponse, limit: int) -> bytes | None:
    """Read a stream into memory up to ``limit``; past it, let the rest stream through."""
    if response.is_async:
        return None
    chunks: list[bytes] = []
    size = 0
    iterator = iter(response.streaming_content)  # type: ignore[arg-type]
    for chunk in iterator:
        chunks.append(bytes(chunk))
        size += len(chunk)
        if size > limit:
            response.streaming_content = _chain(chunks, iterator)
            return None
    response.streaming_content = chunks
    return b"".join(chunks)


def _chain(first: list[bytes], rest: Iterable[Any]) -> Iterable[bytes]:
    yield from first
    yield from rest


def storable_headers(response: HttpResponseBase) -> dict[str, str]:
    stored = {}
    for name, value in response.items():
        lower = name.lower()
        if lower in _NEVER_STORED:
            continue
        if lower in _STORED_HEADERS or lower.startswith("x-"):
            stored[name] = value
    return stored


def replay(record: IdempotencyRecord) -> HttpResponse:
    try:
        headers, body = encryption.unseal(record.response_headers, record.response_body)
    except encryption.CannotDecrypt as exc:
        return _cannot_decrypt(record, exc)
    if body is None:
        return _not_stored(record, headers)
    response = HttpResponse(body, status=record.response_status or 200)
    if not any(name.lower() == "content-type" for name in headers):
        del response["Content-Type"]
    for name, value in headers.items():
        response[name] = value
    if "Cache-Control" not in response:
        response["Cache-Control"] = _REPLAY_CACHE_CONTROL
    response[REPLAYED_HEADER] = "true"
    return told_expiry(response, record)


def told_expiry(
    response: AnyResponse, record: IdempotencyRecord, ttl: timedelta | None = None
) -> AnyResponse:
    """``response`` with ``Idempotency-Expires``: when ``record``'s key is forgotten.

    Read from the record. Where the database computed ``expires_at`` and could not send
    it back with the finalize (MySQL/MariaDB have no ``UPDATE ... RETURNING``), a first
    response gives the app server's time plus ``ttl`` instead of spending a query on a
    hint: a date for the client, which no decision here reads.
    """
    if "expires_at" in record.__dict__:
        expires = record.expires_at
    elif ttl is not None:
        expires = clock.app_now() + ttl
    else:
        return response
    response[_EXPIRES_HEADER] = http_date(expires.timestamp())
    return response


def _cannot_decrypt(record: IdempotencyRecord, error: Exception) -> HttpResponse:
    """Never replay ciphertext or guess: the operation ran, and its answer needs its key."""
    _logger.error(
        "Cannot replay operation %s: %s. Add the key it was encrypted under back to "
        "IDEMPOTENCY['ENCRYPTION_KEYS'].",
        record.pk,
        error,
    )
    return problems.UNAVAILABLE.response(
        "The operation completed, but its stored response is encrypted under a key this "
        "server does not have, so it cannot be replayed now. It was not run again. Retry "
        "later with the same Idempotency-Key.",
        headers={"Retry-After": "60"},
        operation=_status_url(record),
        response_status=record.response_status,
    )


def _not_stored(record: IdempotencyRecord, headers: Mapping[str, str]) -> HttpResponse:
    location = _header(headers, "Location") or _status_url(record)
    extra = (
        {"Location": location, REPLAYED_HEADER: "true"} if location else {REPLAYED_HEADER: "true"}
    )
    return problems.NOT_STORED.response(
        f"The operation completed with status {record.response_status}, but its response "
        "was not stored (larger than MAX_RESPONSE_BYTES, or an asynchronous stream), so "
        "it cannot be replayed. See the Location header.",
        headers=extra,
        operation=_status_url(record),
        response_status=record.response_status,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for stored_name, value in headers.items():
        if stored_name.lower() == name.lower():
            return str(value)
    return None


def _status_url(record: IdempotencyRecord) -> str | None:
    """The operation-status URL, if the project includes ``django_idempotency.urls``."""
    try:
        return reverse("django_idempotency:operation", kwargs={"pk": record.pk})
    except NoReverseMatch:
        return None


def in_progress(record: IdempotencyRecord, retry_after: int) -> HttpResponse:
    return problems.IN_PROGRESS.response(
        "A request with the same Idempotency-Key for the same operation is being processed. "
        "Retry later with the same key.",
        headers={"Retry-After": str(retry_after), **_expires(record)},
        operation=_status_url(record),
    )


def mismatch(record: IdempotencyRecord) -> HttpResponse:
    return problems.KEY_REUSED.response(
        "This Idempotency-Key was already used with a different request (method, path or "
        "body). Idempotency keys must not be reused across different payloads.",
        headers=_expires(record),
    )


def key_expired(record: IdempotencyRecord) -> HttpResponse:
    """410: the operation completed and its answer was kept for ``TTL``, which has
    passed; running it again would do the work twice, so the client is told instead."""
    completed = record.completed_at
    return problems.KEY_EXPIRED.response(
        "A request with this Idempotency-Key completed, and its response is no longer "
        "kept. It was not run again. Use a new key for a new operation.",
        operation_id=str(record.pk),
        completed_at=None if completed is None else completed.isoformat(),
        response_status=record.response_status,
    )


def _expires(record: IdempotencyRecord) -> dict[str, str]:
    expires: datetime | None = record.expires_at
    if expires is None:  # a record not from the database (the docs' examples)
        return {}
    return {_EXPIRES_HEADER: http_date(expires.timestamp())}


_BUSY_DETAIL = {
    "lease_lost": "A retry of this request took the operation over while this attempt "
    "ran, so this attempt's response was not stored.",
    "lock": "A concurrent request held a database lock this request needed, so its "
    "response was not stored.",
}
# True in every mode: an atomic=False view's own commits may stay, so "nothing was
# committed" would be a promise the guard cannot keep.
_BUSY_NEXT_STEP = " Retry with the same Idempotency-Key to get the operation's outcome."


def busy(reason: str, retry_after: int) -> HttpResponse:
    problem = problems.LEASE_LOST if reason == "lease_lost" else problems.LOCK_CONFLICT
    detail = _BUSY_DETAIL["lease_lost" if reason == "lease_lost" else "lock"]
    return problem.response(detail + _BUSY_NEXT_STEP, headers={"Retry-After": str(retry_after)})


def unavailable(retry_after: int = 5) -> HttpResponse:
    return problems.UNAVAILABLE.response(
        "The request was not processed. Retry later with the same Idempotency-Key.",
        headers={"Retry-After": str(retry_after)},
    )


def too_large() -> HttpResponse:
    return problems.BODY_TOO_LARGE.response(
        "The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE, so it cannot be "
        "compared with a retry's. Nothing was run; send a smaller body."
    )


def missing_key() -> HttpResponse:
    return problems.KEY_MISSING.response(
        f"This operation requires an {conf.HEADER} header: send a unique key (a UUID) "
        "and reuse it when you retry."
    )


def invalid_key(reason: str) -> HttpResponse:
    return problems.KEY_INVALID.response(
        f"{reason} An {conf.HEADER} is one string of 1-255 printable ASCII characters."
    )


def accepted(operation: Any, data: Any = None, *, retry_after: int | None = None) -> HttpResponse:
    """``202 Accepted`` with ``Location`` at the operation's status URL.

    For a guarded view whose work goes on after the response (a queued task, a
    provider's webhook)::

        @idempotent
        def start_export(request):
            enqueue_export(request.idempotency.id)
            return accepted(request.idempotency)

    ``operation`` is ``request.idempotency`` (or a record). The 202 itself is what
    the guard stores, so a retry of the same request gets the same 202 and
    ``Location`` back, and the status endpoint reports the *request's* record: once
    the view returned, ``status`` is ``completed`` and ``response_status`` is 202.
    The continuing work reports its own progress (put its URL in ``data``). The body
    is ``data`` as JSON, by default ``{"id": ..., "operation": <status URL>}``;
    ``retry_after`` adds a ``Retry-After`` polling hint in seconds. Needs
    ``django_idempotency.urls`` in the project's URLconf.
    """
    from django.core.exceptions import ImproperlyConfigured
    from django.core.serializers.json import DjangoJSONEncoder

    pk = getattr(operation, "id", None) or getattr(operation, "pk", None)
    try:
        location = reverse("django_idempotency:operation", kwargs={"pk": pk})
    except NoReverseMatch:
        raise ImproperlyConfigured(
            "accepted() points Location at the operation-status endpoint: include "
            'path("idempotency/", include("django_idempotency.urls")) in your URLconf.'
        ) from None
    body = {"id": str(pk), "operation": location} if data is None else data
    response = HttpResponse(
        json.dumps(body, cls=DjangoJSONEncoder), status=202, content_type="application/json"
    )
    response["Location"] = location
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response
