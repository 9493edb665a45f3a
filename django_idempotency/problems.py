"""Every problem+json type the package answers with (RFC 9457), in one place.

Each has its own ``type`` URI under ``PROBLEM_BASE_URL``, documented in
``docs/reference/problems.md``. This module builds bodies only: it knows nothing of
the engine or the records, so conditional updates can use it alone.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse

from django_idempotency.conf import conf


class Problem:
    """One kind of failure: its own ``type`` URI, status and title."""

    def __init__(self, slug: str, status: int, title: str) -> None:
        self.slug = slug
        self.status = status
        self.title = title

    def response(
        self, detail: str, *, headers: dict[str, str] | None = None, **members: Any
    ) -> HttpResponse:
        body = {
            "type": conf.PROBLEM_BASE_URL + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": detail,
            **members,
        }
        response = HttpResponse(
            json.dumps(body), status=self.status, content_type="application/problem+json"
        )
        response["Cache-Control"] = "no-store"
        for name, value in (headers or {}).items():
            response[name] = value
        return response


KEY_MISSING = Problem("idempotency-key-missing", 400, "Idempotency-Key is missing")
KEY_INVALID = Problem("idempotency-key-invalid", 400, "Idempotency-Key is invalid")
KEY_REUSED = Problem("idempotency-key-reused", 422, "Idempotency-Key is already used")
KEY_EXPIRED = Problem("idempotency-key-expired", 410, "Idempotency-Key has expired")
IN_PROGRESS = Problem(
    "idempotency-request-in-progress", 409, "A request is outstanding for this Idempotency-Key"
)
LOCK_CONFLICT = Problem(
    "idempotency-lock-conflict", 409, "A concurrent request holds the lock for this Idempotency-Key"
)
LEASE_LOST = Problem(
    "idempotency-lease-lost", 409, "This attempt was taken over by a retry of the same request"
)
BODY_TOO_LARGE = Problem(
    "idempotency-body-too-large", 413, "The request body is too large to fingerprint"
)
UNAVAILABLE = Problem("idempotency-unavailable", 503, "The idempotency store is unavailable")
NOT_STORED = Problem(
    "idempotency-response-not-stored", 303, "The operation completed; its response was not stored"
)


# The operation-status endpoint's own answers.
OPERATION_NOT_FOUND = Problem("operation-not-found", 404, "No such operation")
OPERATION_METHOD_NOT_ALLOWED = Problem("method-not-allowed", 405, "Method not allowed")
OPERATION_UNAUTHENTICATED = Problem("not-authenticated", 401, "Authentication failed")


# Conditional updates (If-Match).
PRECONDITION_REQUIRED = Problem("precondition-required", 428, "If-Match is required")
PRECONDITION_FAILED = Problem("precondition-failed", 412, "The resource has changed")
IF_MATCH_INVALID = Problem("if-match-invalid", 400, "If-Match is invalid")
