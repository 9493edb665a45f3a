"""The worker app of the duplicate-waits tests: the test tasks, one task that holds its
claim for a while, and ``IDEMPOTENCY["WAIT"]`` of one second
(``tests.celery_wait_settings``), so that a duplicate's claim times out and it must
wait for the running attempt by being re-sent. Start the worker with
``DJANGO_SETTINGS_MODULE=tests.celery_wait_settings``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django_idempotency.celery import idempotent_task
from tests.celery_app.app import app
from tests.testapp.models import Order

__all__ = ["app", "slow_order"]


@idempotent_task(app=app, key=lambda reference, seconds, marker: f"slow:{reference}", max_retries=1)
def slow_order(reference: str, seconds: float, marker: str) -> dict[str, Any]:
    """Writes one order and holds its transaction (and claim) open for ``seconds``.

    ``max_retries=1``: a duplicate waits longer than one retry, and must not spend it.
    """
    with Path(marker).open("a") as file:
        file.write(f"{os.getpid()} run\n")
    order = Order.objects.create(reference=reference)
    time.sleep(seconds)
    return {"order": order.pk, "reference": reference}
