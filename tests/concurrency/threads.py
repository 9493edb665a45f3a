"""Real threads, each with its own database connection, sending real requests.

Every thread closes its connection when it ends, so the test database can be flushed
after the test and no lock outlives the request that took it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import Error, connection
from django.test import Client

JOIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Reply:
    """What a client saw: enough to compare replays and check problem responses."""

    status: int
    body: bytes
    content_type: str
    replayed: bool
    retry_after: str | None
    cache_control: str | None

    @property
    def problem(self) -> dict[str, Any]:
        assert self.content_type == "application/problem+json", self
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @classmethod
    def of(cls, response: Any) -> Reply:
        return cls(
            status=response.status_code,
            body=bytes(response.content),
            content_type=response.get("Content-Type", ""),
            replayed=response.get("Idempotent-Replayed") == "true",
            retry_after=response.get("Retry-After"),
            cache_control=response.get("Cache-Control"),
        )


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4()}"


def send(path: str, key: str, data: Any = None) -> Reply:
    """POST ``data`` (default ``{"reference": key}``) as JSON with ``Idempotency-Key: key``."""
    client = Client(raise_request_exception=True)
    body = json.dumps({"reference": key} if data is None else data)
    response = client.post(
        path, data=body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )
    return Reply.of(response)


def _close_connection() -> None:
    try:
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            # Django never closes an in-memory database; this thread's handle must go,
            # or SQLite's shared-cache table locks outlive the thread.
            if connection.connection is not None:
                connection.connection.close()
                connection.connection = None
            return
        connection.close()
    except Error:  # a test may have cut this connection already
        connection.connection = None


class Worker:
    """One call in its own thread; ``result()`` is its return value or its exception."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self._target = target
        self._value: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._target()
        except BaseException as exc:  # reported to the test, never lost in the thread
            self._value = exc
        finally:
            _close_connection()

    def done(self, timeout: float = 0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self, timeout: float = JOIN_TIMEOUT) -> Any:
        if not self.done(timeout):
            raise AssertionError(f"thread still running after {timeout}s: a hang")
        return self._value


def together(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` for ``i in range(count)`` in threads released at the same instant."""
    barrier = threading.Barrier(count)

    def start(index: int) -> Callable[[], Any]:
        def run() -> Any:
            barrier.wait(JOIN_TIMEOUT)
            return call(index)

        return run

    workers = [Worker(start(index)) for index in range(count)]
    return [worker.result() for worker in workers]


def errors(results: list[Any]) -> list[BaseException]:
    return [result for result in results if isinstance(result, BaseException)]
