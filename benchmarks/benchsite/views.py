"""The overhead benchmark's endpoints: one create-order view, bare and guarded per mode.

The floors are the bare view plus, as raw SQL, the fewest statements a correct guard
needs: a claim INSERT and a finalize UPDATE fenced by the lease token (inside the
business transaction where the mode has one), or one SELECT for a replay. The gap
between a mode and its floor is what the package costs beyond the SQL it must run.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils import timezone

from benchsite.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord, Status

HEADER = "HTTP_IDEMPOTENCY_KEY"
LEASE = timedelta(seconds=90)
TTL = timedelta(hours=1)


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def _create(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    order = Order.objects.create(
        reference=str(payload.get("reference", ""))[:100], amount=int(payload.get("amount", 0))
    )
    response = JsonResponse(
        {"id": order.pk, "reference": order.reference, "amount": order.amount}, status=201
    )
    response["Location"] = f"/orders/{order.pk}/"
    return response


def bare(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    return _create(request)


two_phase = idempotent(required=True)(bare)
single = idempotent(required=True, single_transaction=True)(bare)
non_atomic = idempotent(required=True, atomic=False)(bare)

# A fixed Fernet key: benchmarks only. The settings are read per access, so the view
# swaps in a copy with ENCRYPTION_KEYS for its own request (gunicorn's sync workers run
# one request at a time): two-phase with and without encryption, in one server and run.
BENCH_ENCRYPTION_KEY = "YmVuY2htYXJrcy1vbmx5LWZlcm5ldC1rZXktMzJieXQ="


def encrypted(request: HttpRequest) -> HttpResponse:
    plain = settings.IDEMPOTENCY
    settings.IDEMPOTENCY = {**plain, "ENCRYPTION_KEYS": [BENCH_ENCRYPTION_KEY]}
    try:
        return two_phase(request)
    finally:
        settings.IDEMPOTENCY = plain


def cached(request: HttpRequest) -> HttpResponse:
    """Two-phase with ``REPLAY_CACHE`` (Redis), swapped in for this request as above."""
    plain = settings.IDEMPOTENCY
    settings.IDEMPOTENCY = {**plain, "REPLAY_CACHE": "replays"}
    try:
        return two_phase(request)
    finally:
        settings.IDEMPOTENCY = plain


# ---------------------------------------------------------------- floors (raw SQL)

_fields = {field.column: field for field in IdempotencyRecord._meta.concrete_fields}
_table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _value(column: str, value: Any) -> Any:
    return _fields[column].get_db_prep_save(value, connection)


def _claim(key: str) -> tuple[uuid.UUID, uuid.UUID]:
    now = timezone.now()
    row = {
        "id": uuid.uuid4(),
        "scope": "anonymous",
        "key": key,
        "fingerprint": "0" * 64,
        "status": Status.IN_PROGRESS.value,
        "method": "POST",
        "route": "/floor/",
        "response_headers": {},
        "lease_token": uuid.uuid4(),
        "locked_until": now + LEASE,
        "attempts": 1,
        "recovery_point": "",
        "created_at": now,
        "expires_at": now + TTL,
    }
    columns = ", ".join(_q(column) for column in row)
    marks = ", ".join(["%s"] * len(row))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_table} ({columns}) VALUES ({marks})",
            [_value(column, value) for column, value in row.items()],
        )
    return row["id"], row["lease_token"]


def _finalize(record: uuid.UUID, token: uuid.UUID, response: HttpResponse) -> None:
    now = timezone.now()
    headers = {"Content-Type": response["Content-Type"], "Location": response["Location"]}
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_table} SET {_q('status')} = %s, {_q('response_status')} = %s, "
            f"{_q('response_headers')} = %s, {_q('response_body')} = %s, "
            f"{_q('completed_at')} = %s, {_q('expires_at')} = %s, {_q('locked_until')} = NULL "
            f"WHERE {_q('id')} = %s AND {_q('lease_token')} = %s AND {_q('status')} = %s",
            [
                Status.COMPLETED.value,
                response.status_code,
                _value("response_headers", headers),
                _value("response_body", response.content),
                _value("completed_at", now),
                _value("expires_at", now + TTL),
                _value("id", record),
                _value("lease_token", token),
                Status.IN_PROGRESS.value,
            ],
        )
        if cursor.rowcount != 1:
            raise RuntimeError("lease lost")


def floor_two_phase(request: HttpRequest) -> HttpResponse:
    record, token = _claim(request.META[HEADER])
    with transaction.atomic():
        response = _create(request)
        _finalize(record, token, response)
    return response


def floor_single(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():
        record, token = _claim(request.META[HEADER])
        response = _create(request)
        _finalize(record, token, response)
    return response


def floor_non_atomic(request: HttpRequest) -> HttpResponse:
    record, token = _claim(request.META[HEADER])
    response = _create(request)
    _finalize(record, token, response)
    return response


def floor_replay(request: HttpRequest) -> HttpResponse:
    """One indexed SELECT of a completed record, answered from its stored bytes."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_q('response_status')}, {_q('response_headers')}, {_q('response_body')} "
            f"FROM {_table} WHERE {_q('scope')} = %s AND {_q('key')} = %s",
            ["anonymous", request.META[HEADER]],
        )
        status, headers, body = cursor.fetchone()
    if isinstance(headers, str):
        headers = json.loads(headers)
    response = HttpResponse(bytes(body), status=status)
    for name, value in headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    return response
