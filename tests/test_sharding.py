"""Records live where the business writes happen: one tenant's record commits or rolls
back with that tenant's writes, on that tenant's database, never on the other.

Two real databases of the engine under test: ``default`` holds tenant ``a``, ``shard``
tenant ``b`` (tests/settings.py). Business rows are routed by the tenant a middleware
sets for the whole request; the records' database is found in
each of the three ways a project can say it (``WIRINGS``): the same context, the
router's ``request`` hint, or the view's ``using=``.
"""

from __future__ import annotations

import contextvars
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import include, path

from django_idempotency import checks
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord, Status
from tests.factories import IdempotencyRecordFactory
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "shard"])

TENANTS = {"a": "default", "b": "shard"}
OTHER = {"default": "shard", "shard": "default"}
WIRINGS = ("context", "hints", "using")
MODES = {"two-phase": {}, "single": {"single_transaction": True}, "non-atomic": {"atomic": False}}
HOLDING = {"DATABASES": ["default", "shard"]}
_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


def tenant_database(request: Any) -> str:
    return TENANTS[request.headers.get("X-Tenant", "a")]


class TenantRouter:
    """Business rows go to the current tenant's database. Records: the same (``context``),
    by the guard's ``request`` hint alone (``hints``), or nowhere in particular
    (``using``: the view names the database)."""

    records_by = "context"

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        if model is IdempotencyRecord and self.records_by == "hints":
            request = hints.get("request")
            return None if request is None else tenant_database(request)
        if model is IdempotencyRecord and self.records_by == "using":
            return None
        tenant = _tenant.get()
        return None if tenant is None else TENANTS[tenant]

    db_for_read = db_for_write

    def allow_relation(self, *objects: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True


class TenantMiddleware:
    """The tenant is known for the whole request, as with django-tenants and its kin."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _tenant.set(request.headers.get("X-Tenant", "a"))
        try:
            return self.get_response(request)
        finally:
            _tenant.reset(token)


def place_order(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body or b"{}")
    order = Order.objects.create(reference=body.get("reference", ""), amount=1)
    if body.get("fail"):
        raise RuntimeError("the view failed after its write")
    other = OTHER[tenant_database(request)]
    return JsonResponse(
        {"id": order.pk, "elsewhere_atomic": connections[other].in_atomic_block}, status=201
    )


def _urls() -> list[Any]:
    patterns = []
    for wiring in WIRINGS:
        for mode, options in MODES.items():
            using = {"using": tenant_database} if wiring == "using" else {}
            view = idempotent(**options, **using)(place_order)
            patterns.append(path(f"{wiring}/{mode}/", view))
    if importlib.util.find_spec("rest_framework") is not None:
        patterns.append(path("using/drf/", _drf_view()))
    return patterns


def _drf_view() -> Any:
    from rest_framework.views import APIView

    from django_idempotency.drf import IdempotentMixin

    class TenantOrders(IdempotentMixin, APIView):
        authentication_classes = ()
        permission_classes = ()

        def get_idempotency_using(self, request: Any) -> str:
            return tenant_database(request)

        def post(self, request: Any) -> HttpResponse:
            return place_order(request._request)

    return TenantOrders.as_view()


class StaticUsing:
    """A URLconf whose view names a database that holds no records."""

    urlpatterns = [path("static/", idempotent(using="replica")(place_order))]


urlpatterns = [
    path("idempotency/", include("django_idempotency.urls")),
    path("admin/", admin.site.urls),
    *_urls(),
]
PATHS = [f"/{wiring}/{mode}/" for wiring in WIRINGS for mode in MODES]
ATOMIC_PATHS = [p for p in PATHS if "non-atomic" not in p]
if importlib.util.find_spec("rest_framework") is not None:
    PATHS.append("/using/drf/")
    ATOMIC_PATHS.append("/using/drf/")


@pytest.fixture(autouse=True)
def sharded(request: pytest.FixtureRequest) -> Iterator[None]:
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    TenantRouter.records_by = params.get("path", "/context/").split("/")[1]
    with override_settings(
        ROOT_URLCONF=__name__,
        DATABASE_ROUTERS=[f"{__name__}.TenantRouter"],
        MIDDLEWARE=[*settings.MIDDLEWARE, f"{__name__}.TenantMiddleware"],
        IDEMPOTENCY=HOLDING,
    ):
        yield
    TenantRouter.records_by = "context"


def send(path: str, tenant: str, key: str, client: Client | None = None, **data: Any) -> Any:
    client = client or Client(raise_request_exception=False)
    return client.post(
        path,
        data=json.dumps({"reference": key, **data}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
        HTTP_X_TENANT=tenant,
    )


def rows(alias: str) -> tuple[int, list[str]]:
    """(orders, record statuses) on one database."""
    records = IdempotencyRecord.objects.using(alias).order_by("created_at")
    return Order.objects.using(alias).count(), [r.status for r in records]


@pytest.mark.parametrize("path", PATHS)
def test_each_tenants_record_commits_with_its_writes_on_its_database(path: str) -> None:
    first = send(path, "b", "k1")
    assert first.status_code == 201, first.content
    assert rows("shard") == (1, [Status.COMPLETED])
    assert rows("default") == (0, [])
    again = send(path, "b", "k1")
    assert (again.status_code, again["Idempotent-Replayed"]) == (201, "true")
    assert again.content == first.content
    # The same scope and key on the other tenant's database is another operation.
    other = send(path, "a", "k1")
    assert other.status_code == 201
    assert other.get("Idempotent-Replayed") is None
    assert rows("default") == (1, [Status.COMPLETED])
    assert rows("shard") == (1, [Status.COMPLETED])


@pytest.mark.parametrize("path", ATOMIC_PATHS)
@pytest.mark.parametrize("tenant", ["a", "b"])
def test_a_failed_attempt_rolls_back_with_its_writes_on_its_database(
    path: str, tenant: str
) -> None:
    response = send(path, tenant, "k1", fail=True)
    assert response.status_code == 500
    assert rows("default") == (0, [])
    assert rows("shard") == (0, [])
    assert send(path, tenant, "k1").status_code == 201  # the key is free again
    assert rows(TENANTS[tenant]) == (1, [Status.COMPLETED])
    assert rows(OTHER[TENANTS[tenant]]) == (0, [])


@pytest.mark.parametrize("path", PATHS)
def test_under_atomic_requests_the_other_database_keeps_its_transaction(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for alias in TENANTS.values():
        monkeypatch.setitem(connections[alias].settings_dict, "ATOMIC_REQUESTS", True)
    response = send(path, "b", "k1")
    assert response.status_code == 201, response.content
    assert response.json()["elsewhere_atomic"] is True  # "default" is tenant b's other
    assert rows("shard") == (1, [Status.COMPLETED])
    assert send(path, "b", "k1")["Idempotent-Replayed"] == "true"
    if "non-atomic" not in path:
        assert send(path, "a", "k2", fail=True).status_code == 500
        assert rows("default") == (0, [])


@pytest.mark.parametrize("path", ["/context/two-phase/", "/hints/single/", "/using/non-atomic/"])
def test_concurrent_duplicates_on_a_shard_run_once(path: str) -> None:
    if connections["default"].vendor == "sqlite":
        pytest.skip("concurrent requests need a server database (PostgreSQL, MariaDB)")
    barrier = threading.Barrier(8)
    results: list[int] = []

    def one() -> None:
        try:
            barrier.wait(10)
            results.append(send(path, "b", "race").status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8 and set(results) <= {201, 409}, results
    assert rows("shard") == (1, [Status.COMPLETED])
    assert rows("default") == (0, [])


def test_a_database_that_holds_no_records_is_refused_before_anything_is_written() -> None:
    with override_settings(IDEMPOTENCY={"DATABASES": ["default"]}):
        client = Client(raise_request_exception=True)
        with pytest.raises(ImproperlyConfigured, match=r"'shard'.*IDEMPOTENCY\['DATABASES'\]"):
            send("/context/two-phase/", "b", "k1", client=client)
    assert rows("shard") == (0, [])
    assert rows("default") == (0, [])


@pytest.mark.parametrize("wiring", ["context", "hints"])
def test_the_status_endpoint_reads_the_callers_tenants_database(wiring: str) -> None:
    TenantRouter.records_by = wiring
    send(f"/{wiring}/two-phase/", "b", "k1")
    found = Client().get("/idempotency/operations/", {"key": "k1"}, HTTP_X_TENANT="b")
    assert found.status_code == 200
    assert found.json()["status"] == Status.COMPLETED
    elsewhere = Client().get("/idempotency/operations/", {"key": "k1"}, HTTP_X_TENANT="a")
    assert elsewhere.status_code == 404  # the same scope on tenant a holds nothing


def test_the_replay_cache_never_answers_for_another_tenants_database() -> None:
    caches = {"replays": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=caches, IDEMPOTENCY={**HOLDING, "REPLAY_CACHE": "replays"}):
        assert send("/context/two-phase/", "a", "k1").status_code == 201
        assert send("/context/two-phase/", "a", "k1")["Idempotent-Replayed"] == "true"
        other = send("/context/two-phase/", "b", "k1")
    assert other.status_code == 201
    assert other.get("Idempotent-Replayed") is None
    assert rows("shard") == (1, [Status.COMPLETED])


def expired_on(alias: str, count: int) -> None:
    IdempotencyRecordFactory._meta.database = alias
    try:
        IdempotencyRecordFactory.create_batch(count, expired=True)
    finally:
        IdempotencyRecordFactory._meta.database = "default"


def test_purge_goes_through_every_database_that_holds_records() -> None:
    expired_on("default", 3)
    expired_on("shard", 2)
    out = _purge()
    assert "default: Deleted 3 expired" in out
    assert "shard: Deleted 2 expired" in out
    assert rows("default") == (0, []) and rows("shard") == (0, [])


def test_purge_database_names_one_of_them() -> None:
    expired_on("default", 3)
    expired_on("shard", 2)
    assert _purge("--database", "shard").strip() == (
        "Deleted 2 expired and 0 abandoned records in 1 batch(es)."
    )
    assert IdempotencyRecord.objects.using("default").count() == 3
    with pytest.raises(CommandError, match=r"Invalid --database 'replica'.*'default', 'shard'"):
        _purge("--database", "replica")


def _purge(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("purge_idempotency_records", *args, stdout=out)
    return out.getvalue()


def test_the_admin_lists_each_database_that_holds_records(admin_client: Client) -> None:
    IdempotencyRecordFactory._meta.database = "shard"
    try:
        IdempotencyRecordFactory(key="on-the-shard")
    finally:
        IdempotencyRecordFactory._meta.database = "default"
    IdempotencyRecordFactory(key="on-default")
    url = "/admin/django_idempotency/idempotencyrecord/"
    first = admin_client.get(url).text
    shard = admin_client.get(url, {"database": "shard"}).text
    assert "on-default" in first and "on-the-shard" not in first
    assert "on-the-shard" in shard and "on-default" not in shard
    assert "?database=shard" in first  # the filter offers the other database


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("shard", "must be a list of database aliases"),
        (["default", "nowhere"], "not in DATABASES: ['nowhere']"),
    ],
)
def test_databases_that_cannot_hold_records_are_an_error(value: Any, text: str) -> None:
    with override_settings(IDEMPOTENCY={"DATABASES": value}):
        [error] = [m for m in checks.check_settings() if m.id.endswith("E022")]
    assert text in error.msg


def test_a_router_that_would_split_a_tenants_writes_from_its_records_is_reported() -> None:
    with override_settings(IDEMPOTENCY={"DATABASES": ["default"]}):
        warnings = [m for m in checks.check_sharding() if m.id.endswith("W008")]
    # tests/settings.py's replica is a separate database, not a test mirror: it counts.
    assert [w.msg.split("'")[1] for w in warnings] == ["replica", "shard"]
    assert "Order" in warnings[1].msg
    assert not [m for m in checks.check_sharding() if "'shard'" in m.msg]  # both listed


def test_a_view_naming_a_database_that_holds_no_records_is_an_error() -> None:
    with override_settings(ROOT_URLCONF=StaticUsing):
        errors = [m for m in checks.check_guarded_views() if m.id.endswith("E023")]
    assert len(errors) == 1
    assert "'replica'" in errors[0].msg


def test_ttl_and_lease_stay_per_view_under_sharding() -> None:
    """The records' database changes nothing else of the policy."""
    view = idempotent(using="shard", ttl=timedelta(hours=2))(place_order)
    assert view.idempotency_guard.using == "shard"
    assert view.idempotency_guard.policy().ttl == timedelta(hours=2)


def test_purge_goes_on_past_a_database_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import DatabaseError

    from django_idempotency.models import IdempotencyRecordQuerySet

    expired_on("default", 3)
    expired_on("shard", 2)
    purge = IdempotencyRecordQuerySet.purge

    def failing_on_default(self: IdempotencyRecordQuerySet, **options: Any) -> Any:
        if self.db == "default":
            raise DatabaseError("the server went away")
        return purge(self, **options)

    monkeypatch.setattr(IdempotencyRecordQuerySet, "purge", failing_on_default)
    with pytest.raises(CommandError, match="Purge failed on default; the other databases"):
        _purge()
    assert IdempotencyRecord.objects.using("shard").count() == 0
    assert IdempotencyRecord.objects.using("default").count() == 3


def test_a_records_change_page_reads_the_database_its_list_showed(admin_client: Client) -> None:
    IdempotencyRecordFactory._meta.database = "shard"
    try:
        record = IdempotencyRecordFactory(key="on-the-shard")
    finally:
        IdempotencyRecordFactory._meta.database = "default"
    url = f"/admin/django_idempotency/idempotencyrecord/{record.pk}/change/"
    shown = admin_client.get(url, {"_changelist_filters": "database=shard"})
    assert shown.status_code == 200
    assert "on-the-shard" in shown.text
    missing = admin_client.get(url)  # the first database holds no such record
    assert missing.status_code == 302


@pytest.mark.parametrize("using", [42, ["shard"]])
def test_using_must_name_a_database_or_find_one(using: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="must name the records' database"):
        idempotent(using=using)(place_order)
