"""Strict isolation levels: a serialization failure or a deadlock of an atomic attempt is
run again inside the request (``CONFLICT_RETRIES``), not handed to the client as a 409.

Meaningful under ``ISOLATION=serializable`` (PostgreSQL, MariaDB), which ``.ci/run`` runs
these tests with; at Django's default READ COMMITTED nothing conflicts and they pass
trivially.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest
from django.db import connection

from tests.concurrency.threads import errors, new_key, send, together
from tests.testapp.models import Order

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("row_locks"),
    pytest.mark.skipif(
        bool(os.environ.get("POOLER")),
        reason="16 requests inside their transactions at once need 16 server sessions; "
        "the pooler in CI has 5",
    ),
]

REQUESTS = 16
RETRIED = "again after a serialization failure"


def isolation() -> str:
    """The level the connections start their transactions at (tests/settings.py)."""
    level = connection.settings_dict.get("OPTIONS", {}).get("isolation_level")
    return str(getattr(level, "name", level) or "read committed").lower()


def test_concurrent_intents_that_read_each_others_writes_all_run(
    race: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """16 keys at once, each counting the orders and then creating one: every request gets
    201 and creates exactly one order, however many of them the database refused first."""
    caplog.set_level(logging.INFO, logger="django_idempotency")
    keys = [new_key("count") for _ in range(REQUESTS)]
    race["barrier"] = threading.Barrier(REQUESTS, action=lambda: race.pop("barrier", None))

    results = together(REQUESTS, lambda i: send("/race/count-then-create/", keys[i]))

    assert errors(results) == []
    assert [reply.status for reply in results] == [201] * REQUESTS, results
    assert Order.objects.count() == REQUESTS
    for key in keys:
        assert Order.objects.filter(reference=key).count() == 1
    retried = sum(RETRIED in record.getMessage() for record in caplog.records)
    print(f"isolation {isolation()}: {retried} attempts run again for {REQUESTS} requests")
