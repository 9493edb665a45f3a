"""The test settings with ``IDEMPOTENCY["WAIT"]`` of one second, for ``tests.celery_wait_app``."""

from __future__ import annotations

from datetime import timedelta

from tests.settings import *  # noqa: F403

IDEMPOTENCY = {"WAIT": timedelta(seconds=1)}
