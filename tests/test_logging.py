"""Log lines under ``django_idempotency``: levels, and never a body or a full key."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord, IdempotencyRecordQuerySet
from django_idempotency.signals import key_hash
from tests.factories import IdempotencyRecordFactory, request_fingerprint

KEY = "KEY-SECRET-c0ffee-0123456789"
REQUEST_SECRET = "REQUEST-BODY-SECRET-4711"
RESPONSE_SECRET = "RESPONSE-BODY-SECRET-0815"


@idempotent
def echo(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"{}")
    return JsonResponse({"echo": payload, "secret": RESPONSE_SECRET}, status=201)


urlpatterns = [path("echo/", echo)]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.test_logging")]


def post(data: Any = None, key: str = KEY) -> Any:
    return Client().post(
        "/echo/",
        json.dumps(data if data is not None else {"card": REQUEST_SECRET}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.split(".")[0] == "django_idempotency"]


def everything_in(record: logging.LogRecord) -> str:
    """The message, its arguments, the extra fields and any traceback, as one text."""
    parts = [record.getMessage(), repr(record.args), repr(vars(record))]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="django_idempotency")
    return caplog


class TestLevels:
    def test_started_debug_completed_info(self, logs):
        assert post().status_code == 201
        record = IdempotencyRecord.objects.get()
        lines = [(r.levelno, r.getMessage()) for r in ours(logs)]
        assert lines == [
            (
                logging.DEBUG,
                f"Operation {record.pk} started, attempt 1 (key hash {key_hash(KEY)}).",
            ),
            (
                logging.INFO,
                f"Operation {record.pk} completed with status 201 (key hash {key_hash(KEY)}).",
            ),
        ]
        assert ours(logs)[1].idempotency_operation == str(record.pk)  # type: ignore[attr-defined]
        assert ours(logs)[1].idempotency_key_hash == key_hash(KEY)  # type: ignore[attr-defined]

    def test_replayed_info(self, logs):
        post()
        logs.clear()
        post()
        record = IdempotencyRecord.objects.get()
        assert [(r.levelno, r.getMessage()) for r in ours(logs)] == [
            (
                logging.INFO,
                f"Operation {record.pk} replayed its stored 201 response "
                f"(key hash {key_hash(KEY)}).",
            )
        ]

    def test_conflicts_info(self, logs):
        post()
        logs.clear()
        assert post({"card": "other"}).status_code == 422
        running = IdempotencyRecordFactory(
            key="busy", fingerprint=request_fingerprint(path="/echo/", data={"card": "x"})
        )
        assert post({"card": "x"}, key="busy").status_code == 409
        record = IdempotencyRecord.objects.get(key=KEY)
        assert [(r.levelno, r.getMessage()) for r in ours(logs)] == [
            (logging.INFO, f"Operation {record.pk} refused: mismatch (key hash {key_hash(KEY)})."),
            (
                logging.INFO,
                f"Operation {running.pk} refused: in_progress (key hash {key_hash('busy')}).",
            ),
        ]
        assert ours(logs)[0].idempotency_reason == "mismatch"  # type: ignore[attr-defined]

    def test_lock_conflict_without_a_record(self, logs, monkeypatch):
        def locked(self: Any, **kwargs: Any) -> None:
            raise OperationalError("database is locked")

        monkeypatch.setattr(IdempotencyRecordQuerySet, "claim", locked)
        assert post().status_code == 409
        assert [(r.levelno, r.getMessage()) for r in ours(logs)] == [
            (logging.INFO, f"Operation - refused: lock (key hash {key_hash(KEY)}).")
        ]

    def test_store_unavailable_is_an_error(self, logs, monkeypatch):
        def down(self: Any, **kwargs: Any) -> None:
            raise OperationalError("could not connect to server: Connection refused")

        monkeypatch.setattr(IdempotencyRecordQuerySet, "claim", down)
        assert post().status_code == 503
        errors = [r for r in ours(logs) if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert errors[0].levelno == logging.ERROR
        assert "unavailable" in errors[0].getMessage()
        assert errors[0].exc_info is not None

    def test_quiet_at_warning(self, caplog):
        caplog.set_level(logging.WARNING, logger="django_idempotency")
        post()
        post()
        assert ours(caplog) == []


class TestNothingSecret:
    def test_no_body_bytes_and_no_key_anywhere(self, logs, monkeypatch):
        post()  # started, completed
        post()  # replayed
        post({"card": REQUEST_SECRET, "other": 1})  # mismatch
        monkeypatch.setattr(
            IdempotencyRecordQuerySet,
            "claim",
            lambda self, **kwargs: (_ for _ in ()).throw(OperationalError("server gone")),
        )
        post()  # unavailable
        records = ours(logs)
        assert {r.levelno for r in records} == {logging.DEBUG, logging.INFO, logging.ERROR}
        for record in records:
            text = everything_in(record)
            assert REQUEST_SECRET not in text
            assert RESPONSE_SECRET not in text
            assert KEY not in text
            assert KEY[:12] not in text

    def test_info_and_above_never_carry_the_key(self, logs):
        post()
        post()
        post({"card": "changed"})
        infos = [r for r in ours(logs) if r.levelno >= logging.INFO]
        assert infos
        for record in infos:
            assert KEY not in everything_in(record)
            assert key_hash(KEY) in record.getMessage()

    def test_key_hash_is_short_and_stable(self):
        assert key_hash(KEY) == key_hash(KEY)
        assert len(key_hash(KEY)) == 12
        assert key_hash(KEY) != key_hash(KEY + "x")
