"""System checks: every setting validated, risky set-ups reported, all bound to ``check``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import CheckMessage, registry
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from django.test import override_settings
from django.urls import path

from django_idempotency import checks
from django_idempotency.conf import DEFAULTS
from tests.conftest import needs_drf


def plain_view(request: Any) -> Any:  # pragma: no cover - never requested
    raise NotImplementedError


class WithoutStatusUrls:
    urlpatterns = [path("orders/", plain_view)]


class BusinessElsewhere:
    """Routes the test app's models to another database than the records."""

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "orders" if model._meta.app_label == "testapp" else None


Check = Callable[..., list[CheckMessage]]


def check_error_codes(check: Check = checks.check_settings) -> list[str]:
    return sorted(message.id or "" for message in check(app_configs=None))


def messages(check: Check = checks.check_settings) -> list[CheckMessage]:
    return check(app_configs=None)


class TestDefaults:
    def test_no_settings_no_messages(self):
        for check in (
            checks.check_settings,
            checks.check_records_database,
            checks.check_atomic_requests,
            checks.check_autocommit,
            checks.check_urls,
            checks.check_drf,
        ):
            assert check_error_codes(check) == []

    @override_settings(IDEMPOTENCY=DEFAULTS)
    def test_defaults_spelled_out_are_valid(self):
        assert check_error_codes() == []

    @override_settings(IDEMPOTENCY=None)
    def test_none_is_no_settings(self):
        assert check_error_codes() == []

    def test_every_message_has_a_hint(self, settings):
        settings.IDEMPOTENCY = {
            "HEADER": "",
            "REQUIRED": "yes",
            "TTL": 0,
            "LEASE": 0,
            "WAIT": -1,
            "SCOPE": 1,
            "MAX_RESPONSE_BYTES": 0,
            "METHODS": [],
            "FORM_FIELD": "",
            "PURGE_GRACE": None,
            "PROBLEM_BASE_URL": None,
            "NOPE": 1,
        }
        found = messages()
        assert [m.id for m in found] == [f"django_idempotency.E{n:03d}" for n in range(2, 13)] + [
            "django_idempotency.W002"
        ]
        assert all(m.hint for m in found)


class TestSettings:
    @pytest.mark.parametrize("value", [[], "HEADER", 5, ("Idempotency-Key",)])
    def test_e001_not_a_dict(self, settings, value):
        settings.IDEMPOTENCY = value
        assert check_error_codes() == ["django_idempotency.E001"]

    @pytest.mark.parametrize("value", ["", "Idempotency Key", "Key:", 5, None, "Schlüssel"])
    def test_e002_header(self, settings, value):
        settings.IDEMPOTENCY = {"HEADER": value}
        assert check_error_codes() == ["django_idempotency.E002"]

    @pytest.mark.parametrize("value", ["X-Request-Id", "idempotency-key", "Key_1"])
    def test_e002_valid_headers(self, settings, value):
        settings.IDEMPOTENCY = {"HEADER": value}
        assert check_error_codes() == []

    @pytest.mark.parametrize("value", ["yes", 1, None])
    def test_e003_required(self, settings, value):
        settings.IDEMPOTENCY = {"REQUIRED": value}
        assert check_error_codes() == ["django_idempotency.E003"]

    @pytest.mark.parametrize("value", [timedelta(0), timedelta(seconds=-1), 3600, "24h"])
    def test_e004_ttl(self, settings, value):
        settings.IDEMPOTENCY = {"TTL": value}
        assert check_error_codes() == ["django_idempotency.E004"]

    @pytest.mark.parametrize("value", [timedelta(0), timedelta(seconds=-5), 90, "90s"])
    def test_e005_lease(self, settings, value):
        settings.IDEMPOTENCY = {"LEASE": value}
        assert check_error_codes() == ["django_idempotency.E005"]

    @pytest.mark.parametrize("value", [timedelta(seconds=-1), 0, None])
    def test_e006_wait(self, settings, value):
        settings.IDEMPOTENCY = {"WAIT": value}
        assert check_error_codes() == ["django_idempotency.E006"]

    def test_e006_zero_wait_is_fine(self, settings):
        settings.IDEMPOTENCY = {"WAIT": timedelta(0)}
        assert check_error_codes() == []

    @pytest.mark.parametrize(
        "value",
        ["no_such_module.scope", "django_idempotency.scopes.nope", "by_user", 42, None],
    )
    def test_e007_scope(self, settings, value):
        settings.IDEMPOTENCY = {"SCOPE": value}
        assert check_error_codes() == ["django_idempotency.E007"]

    def test_e007_callable_and_dotted_path_are_fine(self, settings):
        settings.IDEMPOTENCY = {"SCOPE": lambda request: "tenant"}
        assert check_error_codes() == []
        settings.IDEMPOTENCY = {"SCOPE": "django_idempotency.scopes.by_user_or_session"}
        assert check_error_codes() == []

    def test_e007_says_why_the_import_failed(self, settings):
        settings.IDEMPOTENCY = {"SCOPE": "no_such_module.scope"}
        assert "No module named 'no_such_module'" in messages()[0].msg

    @pytest.mark.parametrize("value", [0, -1, True, "1MB", 1.5, None])
    def test_e008_max_response_bytes(self, settings, value):
        settings.IDEMPOTENCY = {"MAX_RESPONSE_BYTES": value}
        assert check_error_codes() == ["django_idempotency.E008"]

    @pytest.mark.parametrize(
        "value",
        ["POST", [], ["GET"], ["POST", "head"], [1], ["PO ST"], None, b"POST", ["OPTIONS"]],
    )
    def test_e009_methods(self, settings, value):
        settings.IDEMPOTENCY = {"METHODS": value}
        assert check_error_codes() == ["django_idempotency.E009"]

    @pytest.mark.parametrize("value", [["post"], ("POST", "PURGE"), {"DELETE"}])
    def test_e009_valid_methods(self, settings, value):
        settings.IDEMPOTENCY = {"METHODS": value}
        assert check_error_codes() == []

    def test_e009_names_the_offenders(self, settings):
        settings.IDEMPOTENCY = {"METHODS": ["POST", "GET"]}
        assert "'GET'" in messages()[0].msg

    @pytest.mark.parametrize("value", ["", None, 3])
    def test_e010_form_field(self, settings, value):
        settings.IDEMPOTENCY = {"FORM_FIELD": value}
        assert check_error_codes() == ["django_idempotency.E010"]

    @pytest.mark.parametrize("value", [timedelta(seconds=-1), "1d", 86400])
    def test_e011_purge_grace(self, settings, value):
        settings.IDEMPOTENCY = {"PURGE_GRACE": value}
        assert check_error_codes() == ["django_idempotency.E011"]

    def test_e012_problem_base_url(self, settings):
        settings.IDEMPOTENCY = {"PROBLEM_BASE_URL": None}
        assert check_error_codes() == ["django_idempotency.E012"]

    def test_w002_unknown_keys(self, settings):
        settings.IDEMPOTENCY = {"LEASES": timedelta(seconds=90), "Header": "X"}
        [warning] = messages()
        assert warning.id == "django_idempotency.W002"
        assert "Header, LEASES" in warning.msg
        assert ", ".join(sorted(DEFAULTS)) in (warning.hint or "")

    @pytest.mark.parametrize("seconds", [1, 10, 29.5])
    def test_w003_short_lease(self, settings, seconds):
        settings.IDEMPOTENCY = {"LEASE": timedelta(seconds=seconds)}
        assert check_error_codes() == ["django_idempotency.W003"]

    def test_w003_thirty_seconds_is_enough(self, settings):
        settings.IDEMPOTENCY = {"LEASE": timedelta(seconds=30)}
        assert check_error_codes() == []

    @pytest.mark.parametrize(
        ("ttl", "lease"),
        [(timedelta(seconds=60), timedelta(seconds=90)), (timedelta(minutes=2),) * 2],
    )
    def test_w004_ttl_not_longer_than_lease(self, settings, ttl, lease):
        settings.IDEMPOTENCY = {"TTL": ttl, "LEASE": lease}
        assert check_error_codes() == ["django_idempotency.W004"]

    def test_w004_against_the_default_lease(self, settings):
        settings.IDEMPOTENCY = {"TTL": timedelta(seconds=60)}
        assert check_error_codes() == ["django_idempotency.W004"]


class TestSetUps:
    @override_settings(DATABASE_ROUTERS=["tests.test_checks.BusinessElsewhere"])
    def test_w001_business_models_on_another_database(self):
        [warning] = messages(checks.check_records_database)
        assert warning.id == "django_idempotency.W001"
        assert "testapp.Order" in warning.msg
        assert warning.hint

    def test_i001_atomic_requests(self, monkeypatch):
        monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
        [info] = messages(checks.check_atomic_requests)
        assert info.id == "django_idempotency.I001"
        assert "opt out" in info.msg
        assert info.hint

    def test_w006_autocommit_off(self, monkeypatch):
        monkeypatch.setitem(connections.settings["default"], "AUTOCOMMIT", False)
        [warning] = messages(checks.check_autocommit)
        assert warning.id == "django_idempotency.W006"
        assert "'default'" in warning.msg and "single_transaction=True" in warning.msg
        assert warning.hint

    @override_settings(ROOT_URLCONF=WithoutStatusUrls)
    def test_w005_status_urls_not_included(self):
        [warning] = messages(checks.check_urls)
        assert warning.id == "django_idempotency.W005"
        assert 'include("django_idempotency.urls")' in (warning.hint or "")

    @override_settings(ROOT_URLCONF="tests.no_such_urls")
    def test_w005_leaves_a_broken_urlconf_to_django(self):
        assert check_error_codes(checks.check_urls) == []

    @needs_drf
    def test_e013_drf_mixin_without_drf(self):
        import tests.testapp.drf_views  # noqa: F401  (subclasses IdempotentMixin)

        apps_without_drf = [
            app for app in settings.INSTALLED_APPS if not app.startswith("rest_framework")
        ]
        with override_settings(INSTALLED_APPS=apps_without_drf):
            found = messages(checks.check_drf)
        assert [m.id for m in found] == ["django_idempotency.E013"]
        assert found[0].msg.startswith("django_idempotency.drf is imported by")
        assert found[0].hint

    @needs_drf
    def test_e013_quiet_with_drf_installed(self):
        import django_idempotency.drf  # noqa: F401

        assert check_error_codes(checks.check_drf) == []


# `manage.py check` asks every database what it supports (Django 6's JSONField check).
every_database = pytest.mark.django_db(databases="__all__")


class TestBound:
    def test_registered(self):
        registered = registry.registry.get_checks()
        for check in (
            checks.check_settings,
            checks.check_records_database,
            checks.check_atomic_requests,
            checks.check_urls,
            checks.check_drf,
        ):
            assert check in registered

    def test_registered_once(self):
        names = [
            c.__name__ for c in registry.registry.get_checks() if "idempotency" in c.__module__
        ]
        assert len(names) == len(set(names))

    @every_database
    def test_manage_py_check_runs_them(self, settings):
        settings.IDEMPOTENCY = {"HEADER": "Idempotency Key"}
        with pytest.raises(SystemCheckError, match=r"django_idempotency\.E002"):
            call_command("check", stdout=StringIO(), stderr=StringIO())

    @every_database
    def test_warnings_fail_at_warning_level(self, settings):
        settings.IDEMPOTENCY = {"LEASE": timedelta(seconds=5)}
        call_command("check", stdout=StringIO(), stderr=StringIO())
        with pytest.raises(SystemCheckError, match=r"django_idempotency\.W003"):
            call_command("check", fail_level="WARNING", stdout=StringIO(), stderr=StringIO())

    @every_database
    @override_settings(ROOT_URLCONF=WithoutStatusUrls)
    def test_manage_py_check_reports_missing_urls(self):
        with pytest.raises(SystemCheckError, match=r"django_idempotency\.W005"):
            call_command("check", fail_level="WARNING", stdout=StringIO(), stderr=StringIO())
