"""The database's clock (``django_idempotency.clock``): what every lease and expiry is
decided on, whatever the app server's own clock says (docs/design.md, "Clocks")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_idempotency import clock
from django_idempotency.models import IdempotencyRecord
from tests.factories import IdempotencyRecordFactory as RecordFactory

pytestmark = pytest.mark.django_db


def test_read_is_aware_and_close_to_now() -> None:
    value = clock.read("default")
    assert timezone.is_aware(value)
    assert abs(value - timezone.now()) < timedelta(seconds=5)


@pytest.mark.parametrize("seconds", [0.25, 90, 86_400 * 3])
def test_after_sql_adds_the_duration(seconds: float) -> None:
    duration = timedelta(seconds=seconds)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {clock.now_sql(connection)}, {clock.after_sql(connection)}",
            [clock.duration_param(duration, connection)],
        )
        now, later = (clock.convert(value, connection) for value in cursor.fetchone())
    # SQLite's clock has milliseconds.
    assert abs((later - now) - duration) < timedelta(milliseconds=2)


def test_orm_expressions_compare_with_stored_datetimes() -> None:
    past = RecordFactory(expires_at=timezone.now() - timedelta(seconds=30))
    future = RecordFactory(expires_at=timezone.now() + timedelta(seconds=30))
    records = IdempotencyRecord.objects
    assert set(records.filter(expires_at__lte=clock.Now())) == {past}
    assert set(records.filter(expires_at__gt=clock.after(timedelta(seconds=10)))) == {future}
    records.filter(pk=past.pk).update(locked_until=clock.after(timedelta(seconds=60)))
    past.refresh_from_db()
    assert past.locked_until is not None
    assert abs(past.locked_until - (clock.read("default") + timedelta(seconds=60))) < timedelta(
        seconds=5
    )


def test_the_app_servers_clock_does_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server two minutes ahead still reads the database's time."""
    ahead = timezone.now() + timedelta(minutes=2)
    monkeypatch.setattr(timezone, "now", lambda: ahead)
    assert clock.read("default") < ahead - timedelta(seconds=60)


class _Elsewhere:
    """A connection of a backend the clock has no SQL for (Oracle, a third party's)."""

    vendor = "oracle"
    alias = "default"


def test_backends_without_clock_sql_say_so_and_fall_back_to_the_app_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = _Elsewhere()
    assert not clock.supported(elsewhere)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        clock.now_sql(elsewhere)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        clock.after_sql(elsewhere)  # type: ignore[arg-type]
    monkeypatch.setattr(connection, "vendor", "oracle")
    before = timezone.now()
    assert before <= clock.read("default") <= timezone.now()
    sql, params = clock.Now().as_sql(None, connection)  # type: ignore[arg-type]
    assert sql == "%s" and len(params) == 1


def test_mysql_reads_utc_and_converts_to_a_stored_zone_that_is_not_utc() -> None:
    class MySQL:
        vendor = "mysql"
        timezone_name = "Europe/Paris"

    assert clock.now_sql(MySQL()) == "CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', 'Europe/Paris')"  # type: ignore[arg-type]
    MySQL.timezone_name = "UTC"
    assert clock.now_sql(MySQL()) == "UTC_TIMESTAMP(6)"  # type: ignore[arg-type]
    assert clock.after_sql(MySQL()) == "(UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND)"  # type: ignore[arg-type]
