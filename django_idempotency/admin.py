"""A read-only admin for idempotency records: look, filter, release stuck, purge expired.

A record is the evidence of what a client was answered. Editing one could replay a
different answer to a retry, and deleting a live one could run a side effect twice, so
nothing here edits or deletes a record one by one. The two actions only delete what
the engine itself would treat as gone: stuck operations (lease ended) and expired
records.

The date drill-down truncates dates in the current time zone, which MySQL and MariaDB
can only do with their time-zone tables loaded (a default install has none:
``CONVERT_TZ()`` answers NULL). Without them the drill-down links are left out, and a
drill-down in the URL still filters, by a range that needs no conversion.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import connections
from django.db.models import Q, QuerySet
from django.http import HttpRequest, QueryDict
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_idempotency import clock, encryption
from django_idempotency.models import (
    IdempotencyRecord,
    IdempotencyRecordQuerySet,
    Status,
    expired_at,
    records_database,
    records_databases,
    tombstone_at,
)

SHOWN_BODY_CHARS = 100_000
VIEW_STORED_RESPONSE = "django_idempotency.view_stored_response"
_REDACTED = {"stored_headers": "redacted_headers", "stored_body": "redacted_body"}
PROBE_DATETIME = "2000-01-01 00:00:00"

_can_truncate: dict[tuple[str, str], bool] = {}


def dates_truncate(alias: str, tzname: str | None = None) -> bool:
    """Whether database ``alias`` can truncate datetimes in ``tzname`` (default: current).

    Only MySQL and MariaDB need to ask: they convert with ``CONVERT_TZ()``, which
    answers NULL without the server's time-zone tables. Asked once per alias and zone.
    """
    connection = connections[alias]
    zone = tzname or timezone.get_current_timezone_name()
    if connection.vendor != "mysql" or not settings.USE_TZ:
        return True
    if connection.timezone_name == zone:
        return True  # no conversion: Django truncates without CONVERT_TZ()
    known = _can_truncate.get((alias, zone))
    if known is None:
        target = connection.ops._prepare_tzname_delta(zone)  # type: ignore[attr-defined]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT CONVERT_TZ(%s, %s, %s)", [PROBE_DATETIME, connection.timezone_name, target]
            )
            row = cursor.fetchone()
        known = _can_truncate[(alias, zone)] = row is not None and row[0] is not None
    return known


if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[IdempotencyRecord]
else:
    ModelAdmin = admin.ModelAdmin  # not subscriptable at run time


def shown_database(request: HttpRequest) -> str:
    """The records database the admin shows: ``?database=`` (kept by the change pages
    in ``_changelist_filters``) when it is one of ``records_databases()``, else the first."""
    holding = records_databases()
    chosen = request.GET.get(DatabaseFilter.parameter_name)
    if chosen is None:
        kept = QueryDict(request.GET.get("_changelist_filters", ""))
        chosen = kept.get(DatabaseFilter.parameter_name)
    return chosen if chosen in holding else holding[0]


class DatabaseFilter(admin.SimpleListFilter):
    """Which of several records databases (``IDEMPOTENCY["DATABASES"]``) to list; shown
    only on a sharded project. ``get_queryset`` reads it: the change pages need it too."""

    title = _("database")
    parameter_name = "database"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        holding = records_databases()
        return [(alias, alias) for alias in holding] if len(holding) > 1 else []

    def value(self) -> str | None:
        holding = records_databases()
        value = super().value()
        return value if value in holding else (holding[0] if len(holding) > 1 else None)

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> QuerySet[IdempotencyRecord]:
        return queryset

    def choices(self, changelist: Any) -> Any:
        for lookup, title in self.lookup_choices:  # no "All": one database at a time
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string(
                    {self.parameter_name: lookup}, [self.parameter_name]
                ),
                "display": title,
            }


class ExpiredFilter(admin.SimpleListFilter):
    title = _("expired")
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> QuerySet[IdempotencyRecord]:
        return choose(queryset, self.value(), expired_at(clock.Now()))


class TombstoneFilter(admin.SimpleListFilter):
    """Completed past their TTL: the answer is gone, the key still taken (TOMBSTONE_TTL)."""

    title = _("tombstone")
    parameter_name = "tombstone"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> QuerySet[IdempotencyRecord]:
        return choose(queryset, self.value(), tombstone_at(clock.Now()))


class StuckFilter(admin.SimpleListFilter):
    """IN_PROGRESS past its lease: the attempt crashed, hangs, or its client gave up."""

    title = _("stuck")
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> QuerySet[IdempotencyRecord]:
        stuck = Q(status=Status.IN_PROGRESS, locked_until__lte=clock.Now())
        return choose(queryset, self.value(), stuck)


class RecordChangeList(ChangeList):
    """Leaves the drill-down links out where the database cannot truncate dates; a
    drill-down in the URL still filters (by a range, computed before this)."""

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        if self.date_hierarchy and not dates_truncate(shown_database(request)):
            self.date_hierarchy = None


def choose(
    queryset: QuerySet[IdempotencyRecord], value: Any, condition: Q
) -> QuerySet[IdempotencyRecord]:
    chosen: QuerySet[IdempotencyRecord] = queryset
    if value == "yes":
        chosen = queryset.filter(condition)
    elif value == "no":
        chosen = queryset.exclude(condition)
    return chosen


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ModelAdmin):
    RELEASED = "Released %(count)d stuck operation(s): the next request with the key runs again."
    KEPT = (
        "Kept %(count)d stuck operation(s) with a recovery point: their atomic=False work "
        "may have acted outside the database, so a retry takes them over instead."
    )
    NOTHING_STUCK = "None of the selected records is a stuck operation."
    PURGED = "Purged %(expired)d expired and %(abandoned)d abandoned record(s)."
    NOTHING_EXPIRED = "None of the selected records has expired."

    list_display = (
        "key",
        "scope",
        "status",
        "method",
        "route",
        "response_status",
        "attempts",
        "created_at",
        "expires_at",
    )
    list_filter = (DatabaseFilter, "status", ExpiredFilter, TombstoneFilter, StuckFilter)
    search_fields = ("key", "scope")
    search_help_text = _("Search by key or scope (user:<pk>, session:h1:<digest>, anonymous, ...).")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    list_per_page = 50
    show_full_result_count = False
    actions = ("release_stuck", "purge_expired")
    fieldsets = (
        (None, {"fields": ("id", "key", "scope", "status", "method", "route", "fingerprint")}),
        (
            _("Attempt"),
            {
                "fields": (
                    "attempts",
                    "lease",
                    "liveness",
                    "claimed_at",
                    "lease_token",
                    "locked_until",
                    "recovery_point",
                )
            },
        ),
        (
            _("Stored response"),
            {"fields": ("response_status", "stored_headers", "stored_size", "stored_body")},
        ),
        (_("Dates"), {"fields": ("created_at", "completed_at", "expires_at")}),
    )

    class Media:
        css = {"all": ("django_idempotency/changelist.css",)}  # nine columns at 1280 px

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RecordChangeList

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """The stored response's headers and body only for users with the
        ``view_stored_response`` permission: they hold what a client was told."""
        if request.user.has_perm(VIEW_STORED_RESPONSE):
            return self.fieldsets
        return tuple(
            (title, {**options, "fields": tuple(_redacted_field(f) for f in options["fields"])})
            for title, options in self.fieldsets
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fieldsets = self.get_fieldsets(request, obj)
        return [str(name) for _title, options in fieldsets for name in options["fields"]]

    def get_queryset(self, request: HttpRequest) -> QuerySet[IdempotencyRecord]:
        records: QuerySet[IdempotencyRecord] = super().get_queryset(request)
        records = records.using(shown_database(request))
        match = request.resolver_match
        if match is None or match.url_name != self._url_name("change"):
            records = records.defer("response_body", "response_headers")
        return records

    def _url_name(self, view: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{view}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Only the actions delete, and only for users allowed to delete records."""
        if obj is not None:
            return False
        return super().has_delete_permission(request)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # Django 6.1 passes where the actions show (ActionLocation) and warns about an
        # override without the parameter; 5.2 has no such parameter.
        where = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **where)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description=_("Release selected stuck operations"), permissions=["delete"])
    def release_stuck(self, request: HttpRequest, queryset: IdempotencyRecordQuerySet) -> None:
        released, kept = queryset.release_stuck()
        if released:
            self.message_user(request, self.RELEASED % {"count": released}, messages.SUCCESS)
        if kept:
            self.message_user(request, self.KEPT % {"count": kept}, messages.WARNING)
        if not released and not kept:
            self.message_user(request, self.NOTHING_STUCK, messages.WARNING)

    @admin.action(description=_("Purge selected expired records"), permissions=["delete"])
    def purge_expired(self, request: HttpRequest, queryset: IdempotencyRecordQuerySet) -> None:
        result = queryset.purge()
        if result.total:
            counts = {"expired": result.expired, "abandoned": result.abandoned}
            self.message_user(request, self.PURGED % counts, messages.SUCCESS)
        else:
            self.message_user(request, self.NOTHING_EXPIRED, messages.WARNING)

    @admin.display(description=_("lease"))
    def lease(self, obj: IdempotencyRecord) -> str:
        if obj.status != Status.IN_PROGRESS or obj.locked_until is None:
            return "-"
        if obj.lease_is_live(clock.read(obj._state.db or records_database())):
            return str(_("live"))
        return str(_("ran out: stuck"))

    @admin.display(description=_("headers"))
    def redacted_headers(self, obj: IdempotencyRecord) -> str:
        return self._redacted(obj.response_headers)

    @admin.display(description=_("body"))
    def redacted_body(self, obj: IdempotencyRecord) -> str:
        if obj.response_body is None:
            return self.stored_body(obj)
        return self._redacted(obj.response_body)

    def _redacted(self, value: Any) -> str:
        if not value:
            return "-"
        return str(
            _("Hidden: showing stored responses needs the “Can view stored response” permission.")
        )

    @admin.display(description=_("headers"))
    def stored_headers(self, obj: IdempotencyRecord) -> SafeString | str:
        try:
            headers, _body = opened(obj, body=False)
        except encryption.CannotDecrypt:
            return str(CANNOT_DECRYPT)
        if not headers:
            return "-"
        rows = format_html_join(
            "", "<tr><th>{}</th><td>{}</td></tr>", ((k, v) for k, v in headers.items())
        )
        return format_html("<table>{}</table>", rows)

    @admin.display(description=_("body size"))
    def stored_size(self, obj: IdempotencyRecord) -> str:
        if obj.response_body is None:
            return "-"
        size = len(bytes(obj.response_body))
        note = " " + str(_("encrypted")) if encryption.is_encrypted(obj.response_headers) else ""
        if size < 1024:
            return f"{size} bytes{note}"
        return f"{filesizeformat(size)} ({size} bytes){note}"

    @admin.display(description=_("body"))
    def stored_body(self, obj: IdempotencyRecord) -> SafeString | str:
        if obj.response_body is None:
            if obj.status == Status.IN_PROGRESS:
                return str(_("No response yet: the operation is in progress."))
            return str(
                _(
                    "Not stored: larger than MAX_RESPONSE_BYTES, or an asynchronous "
                    "stream; replays answer 303."
                )
            )
        try:
            headers, body = opened(obj)
        except encryption.CannotDecrypt:
            return str(CANNOT_DECRYPT)
        assert body is not None
        if not body:
            return str(_("(empty)"))
        text = readable(body, content_type(headers))
        if text is None:
            return str(_("%(size)s of binary data.") % {"size": filesizeformat(len(body))})
        if len(text) > SHOWN_BODY_CHARS:
            note = _("(first %(count)d characters shown)") % {"count": SHOWN_BODY_CHARS}
            return format_html(
                '<pre style="white-space: pre-wrap">{}</pre><p>{}</p>',
                text[:SHOWN_BODY_CHARS],
                note,
            )
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)


def _redacted_field(name: Any) -> Any:
    return _REDACTED.get(name, name) if isinstance(name, str) else name


CANNOT_DECRYPT = _(
    "Encrypted under a key that is not in IDEMPOTENCY['ENCRYPTION_KEYS']: replays of "
    "this record answer 503 until the key is added back."
)


def opened(record: IdempotencyRecord, *, body: bool = True) -> tuple[dict[str, str], bytes | None]:
    """The record's headers and (unless ``body=False``) body in the clear."""
    return encryption.unseal(record.response_headers, record.response_body if body else None)


def content_type(headers: dict[str, str]) -> str:
    for name, value in headers.items():
        if name.lower() == "content-type":
            return str(value).lower()
    return ""


def readable(body: bytes, content_type: str) -> str | None:
    """Pretty-printed JSON, else the text, else ``None`` for binary data."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    media_type = content_type.split(";")[0].strip()
    if not media_type or media_type.endswith("json"):
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):
            pass
    if any(char < " " and char not in "\t\r\n" for char in text):
        return None
    return text
