"""Tasks the worker tests send: each writes one ``Order`` per message it processes.

``marker`` names a file the task appends ``<pid> <event>`` lines to, so the test can
see each attempt and kill the right pool process. ``block`` makes the *first* attempt
stop and wait to be killed: ``"before_commit"`` inside the transaction (the writes are
not committed yet), ``"after_commit"`` right after the commit, before the message is
acknowledged (the case the record exists for).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django.db import transaction

from django_idempotency.celery import idempotent_task
from tests.celery_app.app import app
from tests.testapp.models import Order


def _log(marker: str, event: str) -> list[str]:
    path = Path(marker)
    before = path.read_text().splitlines() if path.exists() else []
    with path.open("a") as file:
        file.write(f"{os.getpid()} {event}\n")
    return before


def _wait_to_be_killed(marker: str) -> None:
    _log(marker, "blocking")
    time.sleep(120)
    raise RuntimeError("the test was meant to kill this process")


@idempotent_task(app=app)
def place_order(reference: str, marker: str = "", block: str = "") -> dict[str, Any]:
    earlier = _log(marker, "run") if marker else []
    first_attempt = not earlier
    order = Order.objects.create(reference=reference)
    if block and first_attempt:
        if block == "before_commit":
            _wait_to_be_killed(marker)
        elif block == "after_commit":
            transaction.on_commit(lambda: _wait_to_be_killed(marker))
    return {"order": order.pk, "reference": reference}


@idempotent_task(app=app, key=lambda invoice, amount: f"invoice:{invoice}:paid")
def pay_invoice(invoice: int, amount: int) -> dict[str, Any]:
    order = Order.objects.create(reference=f"invoice-{invoice}", amount=amount)
    return {"order": order.pk}


@idempotent_task(app=app, bind=True, max_retries=2)
def bound(self: Any, reference: str) -> dict[str, Any]:
    Order.objects.create(reference=reference)
    return {"task_id": self.request.id}
