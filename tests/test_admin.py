"""The read-only admin: list, filters, search, the stored response, the two actions."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.checks import registry
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import include, path, reverse
from django.utils import timezone

from django_idempotency import checks
from django_idempotency.admin import IdempotencyRecordAdmin, dates_truncate
from django_idempotency.models import IdempotencyRecord, Status
from tests.factories import IdempotencyRecordFactory

urlpatterns = [
    path("admin/", admin.site.urls),
    path("idempotency/", include("django_idempotency.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.test_admin")]

CHANGELIST = "admin:django_idempotency_idempotencyrecord_changelist"


def changelist_url(**query: str) -> str:
    url = reverse(CHANGELIST)
    if query:
        url += "?" + "&".join(f"{name}={value}" for name, value in query.items())
    return url


def change_url(record: IdempotencyRecord) -> str:
    return reverse("admin:django_idempotency_idempotencyrecord_change", args=[record.pk])


def listed(client: Client, **query: str) -> set[object]:
    response = client.get(changelist_url(**query))
    assert response.status_code == 200
    return {record.pk for record in response.context["cl"].result_list}


def run_action(client: Client, action: str, records: list[IdempotencyRecord]) -> list[str]:
    response = client.post(
        changelist_url(),
        {"action": action, "_selected_action": [str(record.pk) for record in records]},
    )
    assert response.status_code == 302
    return [str(message) for message in get_messages(response.wsgi_request)]


def stuck(**kwargs: object) -> IdempotencyRecord:
    return IdempotencyRecordFactory(locked_until=timezone.now() - timedelta(seconds=5), **kwargs)


def staff(*permissions: str) -> Client:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:8]}", password="pw", is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


class TestChangelist:
    def test_columns(self, admin_client):
        IdempotencyRecordFactory(completed=True, key="key-abc", scope="user:7")
        response = admin_client.get(changelist_url())
        assert response.status_code == 200
        for header in (
            "Key",
            "Scope",
            "Status",
            "Method",
            "Route",
            "Response status",
            "Attempts",
            "Created at",
            "Expires at",
        ):
            assert f">{header}<" in response.text
        assert "key-abc" in response.text
        assert "user:7" in response.text

    def test_escapes_key_and_scope(self, admin_client):
        IdempotencyRecordFactory(key="<script>alert(1)</script>", scope="<b>scope</b>")
        text = admin_client.get(changelist_url()).text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "<b>scope</b>" not in text

    def test_does_not_load_stored_bodies(self, admin_client):
        IdempotencyRecordFactory(completed=True)
        with CaptureQueriesContext(connection) as queries:
            admin_client.get(changelist_url())
        record_selects = [
            q["sql"]
            for q in queries
            if "django_idempotency_record" in q["sql"] and "SELECT" in q["sql"]
        ]
        assert record_selects
        assert not any("response_body" in sql for sql in record_selects)

    def test_status_filter(self, admin_client):
        done = IdempotencyRecordFactory(completed=True)
        running = IdempotencyRecordFactory()
        assert listed(admin_client, status__exact=Status.COMPLETED) == {done.pk}
        assert listed(admin_client, status__exact=Status.IN_PROGRESS) == {running.pk}

    def test_expired_filter(self, admin_client):
        old = IdempotencyRecordFactory(expired=True)
        fresh = IdempotencyRecordFactory(completed=True)
        assert listed(admin_client, expired="yes") == {old.pk}
        assert listed(admin_client, expired="no") == {fresh.pk}
        assert listed(admin_client) == {old.pk, fresh.pk}

    def test_stuck_filter(self, admin_client):
        dead = stuck()
        running = IdempotencyRecordFactory()
        done = IdempotencyRecordFactory(completed=True)
        assert listed(admin_client, stuck="yes") == {dead.pk}
        assert listed(admin_client, stuck="no") == {running.pk, done.pk}

    def test_search_by_key_and_scope(self, admin_client):
        by_key = IdempotencyRecordFactory(key="order-4711", scope="user:1")
        by_scope = IdempotencyRecordFactory(key="other", scope="tenant:acme")
        IdempotencyRecordFactory(key="unrelated", scope="user:2")
        assert listed(admin_client, q="4711") == {by_key.pk}
        assert listed(admin_client, q="acme") == {by_scope.pk}

    def test_date_hierarchy(self, admin_client):
        record = IdempotencyRecordFactory()
        assert IdempotencyRecordAdmin.date_hierarchy == "created_at"
        year = str(record.created_at.year)
        assert listed(admin_client, created_at__year=year) == {record.pk}
        assert listed(admin_client, created_at__year=str(record.created_at.year - 1)) == set()


def server_has_time_zone_tables() -> bool:
    """What the server itself says: the tables are loaded, or ``CONVERT_TZ()`` is NULL."""
    if connection.vendor != "mysql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM mysql.time_zone_name")
        return bool(cursor.fetchone()[0])


# 23:30 UTC on 15 March is 00:30 on 16 March in Paris: the drill-down is by local dates.
PARIS_NIGHT = datetime(2026, 3, 15, 23, 30, tzinfo=dt_timezone.utc)
PARIS_DRILL_DOWNS = [
    {},
    {"created_at__year": "2026"},
    {"created_at__year": "2026", "created_at__month": "3"},
    {"created_at__year": "2026", "created_at__month": "3", "created_at__day": "16"},
]


@pytest.fixture
def paris(settings: Any) -> None:
    settings.USE_TZ = True
    settings.TIME_ZONE = "Europe/Paris"


@pytest.mark.usefixtures("paris")
class TestTimeZones:
    """MySQL and MariaDB truncate dates in TIME_ZONE with CONVERT_TZ(), which is NULL
    without the server's time-zone tables (a default install): the changelist must
    answer all the same, on every database."""

    @pytest.mark.parametrize("query", PARIS_DRILL_DOWNS, ids=["none", "year", "month", "day"])
    def test_changelist_answers_with_and_without_a_drill_down(self, admin_client, query):
        night = IdempotencyRecordFactory(created_at=PARIS_NIGHT)
        IdempotencyRecordFactory(created_at=PARIS_NIGHT - timedelta(days=1))
        response = admin_client.get(changelist_url(**query))
        assert response.status_code == 200
        shown = {record.pk for record in response.context["cl"].result_list}
        assert night.pk in shown
        assert len(shown) == (1 if "created_at__day" in query else 2)

    def test_the_drill_down_is_shown_where_the_database_can_truncate(self, admin_client):
        IdempotencyRecordFactory(created_at=PARIS_NIGHT)
        response = admin_client.get(changelist_url())
        able = server_has_time_zone_tables()
        assert dates_truncate(connection.alias) is able
        assert response.context["cl"].date_hierarchy == ("created_at" if able else None)
        assert ("created_at__day=16" in response.text) is able

    def test_without_time_zone_tables_the_drill_down_is_left_out(self, admin_client, monkeypatch):
        monkeypatch.setattr("django_idempotency.admin.dates_truncate", lambda alias: False)
        night = IdempotencyRecordFactory(created_at=PARIS_NIGHT)
        IdempotencyRecordFactory(created_at=PARIS_NIGHT + timedelta(days=1))
        response = admin_client.get(changelist_url())
        assert response.status_code == 200
        assert response.context["cl"].date_hierarchy is None
        assert "created_at__year=" not in response.text
        # A bookmarked drill-down still filters, by local dates.
        day = PARIS_DRILL_DOWNS[-1]
        assert listed(admin_client, **day) == {night.pk}

    def test_asks_the_database_once_per_alias_and_zone(self):
        able = server_has_time_zone_tables()
        assert dates_truncate(connection.alias) is able
        with CaptureQueriesContext(connection) as queries:
            assert dates_truncate(connection.alias) is able
        assert len(queries) == 0

    def test_utc_needs_no_time_zone_tables(self, settings):
        settings.TIME_ZONE = "UTC"
        with CaptureQueriesContext(connection) as queries:
            assert dates_truncate(connection.alias) is True
        assert len(queries) == 0

    def test_w007_says_how_to_load_the_tables(self, monkeypatch):
        assert checks.check_time_zone_tables(databases=None) == []
        found = checks.check_time_zone_tables(databases=[connection.alias])
        assert [message.id for message in found] == (
            [] if server_has_time_zone_tables() else ["django_idempotency.W007"]
        )
        monkeypatch.setattr("django_idempotency.admin.dates_truncate", lambda alias, zone: False)
        [warning] = checks.check_time_zone_tables(databases=[connection.alias])
        assert warning.id == "django_idempotency.W007"
        assert "'Europe/Paris'" in warning.msg and "drill-down" in warning.msg
        assert "mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb -u root mysql" in warning.hint
        assert "mysql_tzinfo_to_sql" in warning.hint

    def test_w007_is_registered(self):
        assert checks.check_time_zone_tables in registry.registry.get_checks()


class TestChangePage:
    def test_pretty_prints_a_json_body_with_headers_and_size(self, admin_client):
        body = b'{"id":1,"items":[{"sku":"A"}]}'
        record = IdempotencyRecordFactory(
            completed=True,
            response_body=body,
            response_headers={"Content-Type": "application/json", "Location": "/orders/1/"},
        )
        text = admin_client.get(change_url(record)).text
        assert "{\n  &quot;id&quot;: 1,\n  &quot;items&quot;: [\n    {\n" in text
        assert "<th>Location</th><td>/orders/1/</td>" in text
        assert f">{len(body)} bytes<" in text

    def test_large_body_size_in_units_and_bytes(self, admin_client):
        body = b'"' + b"x" * 2046 + b'"'
        record = IdempotencyRecordFactory(completed=True, response_body=body)
        assert "2.0\xa0KB (2048 bytes)" in admin_client.get(change_url(record)).text

    def test_escapes_everything(self, admin_client):
        record = IdempotencyRecordFactory(
            completed=True,
            key="<i>k</i>",
            response_body=b'{"html": "<script>alert(1)</script>"}',
            response_headers={"Content-Type": "application/json", "X-Evil": "<img src=x>"},
        )
        text = admin_client.get(change_url(record)).text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "<img src=x>" not in text
        assert "&lt;img src=x&gt;" in text
        assert "<i>k</i>" not in text

    def test_text_and_binary_and_missing_bodies(self, admin_client):
        text_record = IdempotencyRecordFactory(
            completed=True,
            response_body=b"<p>created</p>",
            response_headers={"Content-Type": "text/html"},
        )
        binary = IdempotencyRecordFactory(
            completed=True,
            response_body=b"\x89PNG\r\n\x1a\n\x00\x00",
            response_headers={"Content-Type": "image/png"},
        )
        not_stored = IdempotencyRecordFactory(completed=True, response_body=None)
        running = IdempotencyRecordFactory()
        assert "&lt;p&gt;created&lt;/p&gt;" in admin_client.get(change_url(text_record)).text
        assert "10\xa0bytes of binary data." in admin_client.get(change_url(binary)).text
        assert "Not stored: larger than MAX_RESPONSE_BYTES, or an asynchronous stream" in (
            admin_client.get(change_url(not_stored)).text
        )
        assert "No response yet: the operation is in progress." in (
            admin_client.get(change_url(running)).text
        )

    def test_shows_lease_state(self, admin_client):
        assert ">live<" in admin_client.get(change_url(IdempotencyRecordFactory())).text
        assert "ran out: stuck" in admin_client.get(change_url(stuck())).text

    def test_is_read_only(self, admin_client):
        record = IdempotencyRecordFactory(completed=True)
        response = admin_client.get(change_url(record))
        assert response.status_code == 200
        text = response.text
        assert 'name="_save"' not in text
        assert 'name="_continue"' not in text
        assert 'name="_addanother"' not in text
        form = text.split('id="content-main"')[1]
        assert re.findall(r"<(?:input|textarea|select|button)\b[^>]*>", form) == [
            re.search(r'<input type="hidden" name="csrfmiddlewaretoken"[^>]*>', form)[0]
        ]
        assert 'class="closelink"' in text
        assert "/delete/" not in text
        posted = admin_client.post(change_url(record), {"key": "changed", "status": "completed"})
        assert posted.status_code == 403
        assert IdempotencyRecord.objects.get(pk=record.pk).key == record.key

    def test_no_add_and_no_delete(self, admin_client):
        record = IdempotencyRecordFactory(completed=True)
        add = reverse("admin:django_idempotency_idempotencyrecord_add")
        assert admin_client.get(add).status_code == 403
        delete = reverse("admin:django_idempotency_idempotencyrecord_delete", args=[record.pk])
        assert admin_client.get(delete).status_code == 403
        assert admin_client.post(delete, {"post": "yes"}).status_code == 403
        assert IdempotencyRecord.objects.filter(pk=record.pk).exists()
        response = admin_client.get(changelist_url())
        assert "delete_selected" not in response.text
        assert "Add idempotency record" not in response.text


class TestActions:
    def test_release_stuck(self, admin_client):
        dead = stuck()
        running = IdempotencyRecordFactory()
        done = IdempotencyRecordFactory(completed=True)
        messages = run_action(admin_client, "release_stuck", [dead, running, done])
        assert messages == [IdempotencyRecordAdmin.RELEASED % {"count": 1}]
        assert set(IdempotencyRecord.objects.values_list("pk", flat=True)) == {
            running.pk,
            done.pk,
        }

    def test_release_keeps_checkpointed_work_and_says_so(self, admin_client):
        dead = stuck()
        checkpointed = stuck(recovery_point="charged")
        messages = run_action(admin_client, "release_stuck", [dead, checkpointed])
        assert messages == [
            IdempotencyRecordAdmin.RELEASED % {"count": 1},
            IdempotencyRecordAdmin.KEPT % {"count": 1},
        ]
        assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [checkpointed.pk]

    def test_release_only_touches_the_selection(self, admin_client):
        selected = stuck()
        other = stuck()
        run_action(admin_client, "release_stuck", [selected])
        assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [other.pk]

    def test_release_with_nothing_stuck(self, admin_client):
        running = IdempotencyRecordFactory()
        messages = run_action(admin_client, "release_stuck", [running])
        assert messages == [IdempotencyRecordAdmin.NOTHING_STUCK]
        assert IdempotencyRecord.objects.filter(pk=running.pk).exists()

    def test_purge_expired(self, admin_client):
        old = IdempotencyRecordFactory(expired=True)
        abandoned = IdempotencyRecordFactory(locked_until=timezone.now() - timedelta(days=2))
        fresh = IdempotencyRecordFactory(completed=True)
        messages = run_action(admin_client, "purge_expired", [old, abandoned, fresh])
        assert messages == [IdempotencyRecordAdmin.PURGED % {"expired": 1, "abandoned": 1}]
        assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [fresh.pk]

    def test_purge_with_nothing_expired(self, admin_client):
        fresh = IdempotencyRecordFactory(completed=True)
        messages = run_action(admin_client, "purge_expired", [fresh])
        assert messages == [IdempotencyRecordAdmin.NOTHING_EXPIRED]
        assert IdempotencyRecord.objects.filter(pk=fresh.pk).exists()

    def test_purge_across_the_whole_filtered_list(self, admin_client):
        for _ in range(3):
            IdempotencyRecordFactory(expired=True)
        kept = IdempotencyRecordFactory(completed=True)
        response = admin_client.post(
            changelist_url(),
            {"action": "purge_expired", "select_across": "1", "_selected_action": [str(kept.pk)]},
        )
        assert response.status_code == 302
        assert [str(m) for m in get_messages(response.wsgi_request)] == [
            IdempotencyRecordAdmin.PURGED % {"expired": 3, "abandoned": 0}
        ]
        assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [kept.pk]


class TestAccess:
    @pytest.mark.parametrize("who", ["anonymous", "non-staff"])
    def test_cannot_reach_any_of_it(self, who):
        record = stuck()
        client = Client()
        if who == "non-staff":
            user = User.objects.create_user("plain", password="pw")
            client.force_login(user)
        login = reverse("admin:login")
        for url in (changelist_url(), change_url(record)):
            response = client.get(url)
            assert response.status_code == 302
            assert response["Location"].startswith(login)
        response = client.post(
            changelist_url(), {"action": "release_stuck", "_selected_action": [str(record.pk)]}
        )
        assert response.status_code == 302
        assert response["Location"].startswith(login)
        assert IdempotencyRecord.objects.filter(pk=record.pk).exists()

    def test_staff_without_permission_is_refused(self):
        client = staff()
        assert client.get(changelist_url()).status_code == 403
        assert client.get(change_url(IdempotencyRecordFactory())).status_code == 403

    def test_view_permission_sees_records_but_no_actions(self):
        client = staff("view_idempotencyrecord")
        record = stuck()
        response = client.get(changelist_url())
        assert response.status_code == 200
        assert "release_stuck" not in response.text
        assert client.get(change_url(record)).status_code == 200
        client.post(
            changelist_url(), {"action": "release_stuck", "_selected_action": [str(record.pk)]}
        )
        assert IdempotencyRecord.objects.filter(pk=record.pk).exists()

    def test_delete_permission_allows_the_actions_only(self):
        client = staff("view_idempotencyrecord", "delete_idempotencyrecord")
        record = stuck()
        assert "release_stuck" in client.get(changelist_url()).text
        delete = reverse("admin:django_idempotency_idempotencyrecord_delete", args=[record.pk])
        assert client.post(delete, {"post": "yes"}).status_code == 403
        assert run_action(client, "release_stuck", [record]) == [
            IdempotencyRecordAdmin.RELEASED % {"count": 1}
        ]
