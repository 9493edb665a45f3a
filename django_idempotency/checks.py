"""System checks: settings and risky set-ups, reported at start-up with a hint."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Tags, Warning, register
from django.db import router


@register(Tags.database)
def check_records_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W001: the business writes can only commit with "done" on the same database."""
    from django_idempotency.models import IdempotencyRecord

    records_db = router.db_for_write(IdempotencyRecord) or "default"
    elsewhere = sorted(
        model._meta.label
        for model in apps.get_models()
        if model._meta.app_label
        not in {"django_idempotency", "contenttypes", "auth", "sessions", "admin"}
        and (router.db_for_write(model) or "default") != records_db
    )
    if not elsewhere:
        return []
    return [
        Warning(
            f"Idempotency records are written to {records_db!r}, but these models are "
            f"written elsewhere: {', '.join(elsewhere[:10])}"
            + (" ..." if len(elsewhere) > 10 else "")
            + ". Their writes cannot commit in one transaction with the record, so a "
            "crash between the two commits can run a side effect twice.",
            hint="Route IdempotencyRecord to the database of the models your guarded "
            "views write, or guard those views with atomic=False and derived keys.",
            id="django_idempotency.W001",
        )
    ]
