from __future__ import annotations

from django.apps import AppConfig, apps
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "django_idempotency"
    verbose_name = _("Idempotency")
    # Fixed, so a project's DEFAULT_AUTO_FIELD can never create a migration here.
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django.core.checks import Tags, register

        from django_idempotency import checks, signals

        register(checks.check_settings, Tags.compatibility)
        register(checks.check_records_database, Tags.database)
        register(checks.check_sharding, Tags.database)
        register(checks.check_atomic_requests, Tags.database)
        register(checks.check_autocommit, Tags.database)
        register(checks.check_time_zone_tables, Tags.database)
        register(checks.check_urls, Tags.urls)
        register(checks.check_guarded_views, Tags.urls)
        register(checks.check_drf, Tags.compatibility)
        signals.connect_logging()
        if apps.is_installed("drf_spectacular"):
            from django_idempotency import openapi  # noqa: F401  (registers the extensions)
