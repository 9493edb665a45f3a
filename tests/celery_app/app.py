"""The Celery app a real worker process runs in the tests.

The worker gets the test run's settings and database through the environment
(``DJANGO_SETTINGS_MODULE``, ``DATABASE_URL``) and a queue of its own
(``IDEM_CELERY_QUEUE``), so parallel test runs never steal each other's messages.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from celery import Celery  # noqa: E402

app = Celery("idempotency_tests")
app.conf.update(
    broker_url=os.environ.get("IDEM_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    result_backend="rpc://",
    task_default_queue=os.environ.get("IDEM_CELERY_QUEUE", "idempotency-tests"),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)

from tests.celery_app import tasks  # noqa: E402, F401  (registers the tasks)
