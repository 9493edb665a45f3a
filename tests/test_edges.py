"""Where a project's own code meets the guard: its transactions, its error handling, its
per-view settings, and the wirings whose opt-out of ATOMIC_REQUESTS cannot reach Django.

Each test here failed before the fix it names; tests/test_wiring.py drives the same
properties over every wiring.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.http import JsonResponse
from django.test import Client
from django.urls import path
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from django_idempotency import checks
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord
from tests.conftest import send
from tests.testapp.models import Order

HAS_DRF = importlib.util.find_spec("rest_framework") is not None
MODES: dict[str, dict[str, Any]] = {
    "two_phase": {},
    "single": {"single_transaction": True},
}


def handles_integrity_error(request: Any) -> JsonResponse:
    """Answers a duplicate primary key itself, as many views do for unique fields."""
    try:
        Order.objects.create(pk=1, reference="taken")
    except IntegrityError:
        return JsonResponse({"error": "taken"}, status=409)
    return JsonResponse({"id": 1}, status=201)  # pragma: no cover - the row exists


def rolls_back(request: Any) -> JsonResponse:
    Order.objects.create(reference="rolled back")
    transaction.set_rollback(True)
    return JsonResponse({"dry_run": True}, status=200)


def swallows_a_raw_error(request: Any) -> JsonResponse:
    """A raw cursor's error, caught: PostgreSQL has aborted the transaction anyway."""
    with connection.cursor() as cursor:
        try:
            cursor.execute("SELECT CAST('not a number' AS INTEGER)")
        except DatabaseError:
            return JsonResponse({"error": "bad"}, status=400)
    return JsonResponse({}, status=200)  # pragma: no cover - PostgreSQL only


class Charge(View):
    def post(self, request: Any) -> JsonResponse:
        order = Order.objects.create(reference="cbv")
        return JsonResponse({"id": order.pk}, status=201)


def charge_view(decorate: Any, name: str) -> Any:
    """``method_decorator`` on a class of its own: it changes the class it is given."""
    return method_decorator(decorate, name=name)(type("Charge", (Charge,), {})).as_view()


urlpatterns = [
    path(f"{name}/{mode}/", csrf_exempt(idempotent(**options)(view)))
    for name, view in (
        ("integrity", handles_integrity_error),
        ("rollback", rolls_back),
        ("raw", swallows_a_raw_error),
    )
    for mode, options in MODES.items()
] + [
    path("cbv/post/", charge_view(idempotent, "post")),
    path("cbv/post-nonatomic/", charge_view(idempotent(atomic=False), "post")),
    path("cbv/dispatch-nonatomic/", charge_view(idempotent(atomic=False), "dispatch")),
    path("short-ttl/", idempotent(ttl=timedelta(seconds=1))(handles_integrity_error)),
]

if HAS_DRF:
    from rest_framework.decorators import api_view
    from rest_framework.response import Response

    def charge(request: Any) -> Response:
        order = Order.objects.create(reference="api", owner=str(request.user))
        return Response({"id": order.pk, "user": str(request.user)}, status=201)

    urlpatterns += [
        path("api/below/", api_view(["POST"])(idempotent(charge))),
        path("api/below-nonatomic/", api_view(["POST"])(idempotent(atomic=False)(charge))),
        path("api/above/", idempotent(api_view(["POST"])(charge))),
        path("api/above-nonatomic/", idempotent(atomic=False)(api_view(["POST"])(charge))),
    ]

pytestmark = pytest.mark.urls(__name__)
needs_drf = pytest.mark.skipif(not HAS_DRF, reason="needs Django REST framework")


@pytest.fixture
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


# A view that handles its own database error: its answer, nothing stored, key released.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", MODES)
def test_a_view_that_answers_its_own_integrity_error(mode: str) -> None:
    Order.objects.create(pk=1, reference="first")
    client = Client()
    for _attempt in range(2):  # was 503 on this and every retry
        response = send(client, f"/integrity/{mode}/", {}, key="k1")
        assert response.status_code == 409
        assert response.json() == {"error": "taken"}
        assert "Idempotent-Replayed" not in response
        assert not IdempotencyRecord.objects.exists()
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", MODES)
def test_a_view_that_sets_rollback(mode: str) -> None:
    for _attempt in range(2):
        response = send(Client(), f"/rollback/{mode}/", {}, key="k1")
        assert response.status_code == 200
        assert response.json() == {"dry_run": True}
        assert not IdempotencyRecord.objects.exists()
    assert not Order.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", MODES)
def test_a_view_that_swallows_an_error_postgresql_aborted(mode: str) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL aborts a transaction on any error")
    for _attempt in range(2):
        response = send(Client(), f"/raw/{mode}/", {}, key="k1")
        assert response.status_code == 400
        assert not IdempotencyRecord.objects.exists()


# Inside a transaction the claim cannot commit first: the guard claims inside it.


@pytest.mark.django_db(transaction=True)
def test_method_decorator_on_a_handler_under_atomic_requests(atomic_requests: None) -> None:
    client = Client()
    first = send(client, "/cbv/post/", {}, key="k1")
    assert first.status_code == 201  # was 500: a durable block nested in the request's
    again = send(client, "/cbv/post/", {}, key="k1")
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
@needs_drf
def test_api_view_above_idempotent_under_atomic_requests(atomic_requests: None) -> None:
    client = Client()
    first = send(client, "/api/below/", {}, key="k1")
    assert first.status_code == 201
    assert send(client, "/api/below/", {}, key="k1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_own_atomic_block_around_a_two_phase_view(rf: Any) -> None:
    view = idempotent(lambda request: JsonResponse({"id": Order.objects.create().pk}, status=201))
    request = rf.post("/x/", data="{}", content_type="application/json")
    request.META["HTTP_IDEMPOTENCY_KEY"] = "k1"
    with transaction.atomic():
        assert view(request).status_code == 201
        assert IdempotencyRecord.objects.get().status == "completed"
    assert Order.objects.count() == 1


# @idempotent above @api_view: the scope is DRF's authenticated user.


@pytest.mark.django_db(transaction=True)
@needs_drf
@pytest.mark.parametrize("route", ["/api/above/", "/api/below/"])
def test_token_users_never_share_a_replay(route: str, django_user_model: Any) -> None:
    from rest_framework.authtoken.models import Token

    tokens = {}
    for name in ("alice", "bob"):
        user = django_user_model.objects.create_user(name, password="pw")
        tokens[name] = Token.objects.create(user=user).key
    answers = {
        name: send(Client(), route, {"item": 1}, key="same", HTTP_AUTHORIZATION=f"Token {token}")
        for name, token in tokens.items()
    }
    for name, response in answers.items():
        assert response.status_code == 201
        assert "Idempotent-Replayed" not in response  # bob got alice's order before
        assert json.loads(response.content)["user"] == name
    assert sorted(IdempotencyRecord.objects.values_list("scope", flat=True)) == sorted(
        f"user:{django_user_model.objects.get(username=name).pk}" for name in tokens
    )


@pytest.mark.django_db(transaction=True)
@needs_drf
def test_idempotent_above_api_view_keeps_the_opt_out(atomic_requests: None) -> None:
    client = Client()
    assert send(client, "/api/above-nonatomic/", {}, key="k1").status_code == 201
    assert send(client, "/api/above-nonatomic/", {}, key="k1")["Idempotent-Replayed"] == "true"


# Per-view durations: refused where the view is decorated, and checked per URL.


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"atomic": False, "ttl": timedelta(seconds=1), "lease": timedelta(seconds=60)}, "ttl"),
        ({"ttl": timedelta(0)}, "positive"),
        ({"lease": 30}, "timedelta"),
        ({"lease": timedelta(seconds=-1)}, "positive"),
    ],
)
def test_contradictory_per_view_durations_are_refused_at_decoration(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        idempotent(**options)


@needs_drf
def test_contradictory_mixin_durations_are_refused_at_class_definition() -> None:
    from rest_framework.views import APIView

    from django_idempotency.drf import IdempotentMixin

    with pytest.raises(ImproperlyConfigured, match="ttl"):
        type(
            "Bad",
            (IdempotentMixin, APIView),
            {"idempotency_ttl": timedelta(seconds=5), "idempotency_lease": timedelta(seconds=10)},
        )


def test_a_views_own_ttl_is_checked_against_the_lease() -> None:
    found = [m for m in checks.check_guarded_views() if m.id == "django_idempotency.W004"]
    assert ["short-ttl/" in message.msg for message in found] == [True]


def test_atomic_false_where_the_opt_out_cannot_reach_is_refused_at_start_up(
    atomic_requests: None,
) -> None:
    found = sorted(
        message.msg.split("'")[1]
        for message in checks.check_guarded_views()
        if message.id == "django_idempotency.E014"
    )
    assert found == sorted(["cbv/post-nonatomic/"] + (["api/below-nonatomic/"] if HAS_DRF else []))


def test_no_e014_without_atomic_requests() -> None:
    assert [m for m in checks.check_guarded_views() if m.id == "django_idempotency.E014"] == []


@pytest.mark.django_db(transaction=True)
def test_dispatch_carries_the_opt_out(atomic_requests: None) -> None:
    client = Client()
    assert send(client, "/cbv/dispatch-nonatomic/", {}, key="k1").status_code == 201
    assert send(client, "/cbv/dispatch-nonatomic/", {}, key="k1")["Idempotent-Replayed"] == "true"


# Unguarded requests carry no operation id.


@pytest.mark.django_db
def test_unguarded_request_has_no_operation_id(rf: Any) -> None:
    seen = {}

    @idempotent
    def view(request: Any) -> JsonResponse:
        seen["operation"] = request.idempotency
        return JsonResponse({}, status=201)

    view(rf.post("/x/", data="{}", content_type="application/json"))
    operation = seen["operation"]
    assert operation.guarded is False
    assert operation.id is None
    assert operation.derived_key("charge") != type(operation)().derived_key("charge")


# A duplicate nested in a transaction that already read: it must see the first's record.


@pytest.mark.django_db(transaction=True)
def test_a_nested_duplicate_replays_although_its_transaction_read_before() -> None:
    """Django runs MySQL/MariaDB in READ COMMITTED, so the record a nested duplicate
    waited for is visible to its read. Under REPEATABLE READ the transaction's first
    read would fix its snapshot, hide the record, and the claim would answer 409 instead
    of replaying: this pins the isolation the nested claim relies on."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; there are no row locks to wait on")
    import threading
    import time

    from django.test import RequestFactory

    claimed = threading.Event()

    @idempotent
    def slow(request: Any) -> JsonResponse:
        order = Order.objects.create(reference="nested")
        claimed.set()
        time.sleep(0.5)
        return JsonResponse({"id": order.pk}, status=201)

    def request() -> Any:
        made = RequestFactory().post("/slow/", data="{}", content_type="application/json")
        made.META["HTTP_IDEMPOTENCY_KEY"] = "k1"
        return made

    answers: list[Any] = []

    def first() -> None:
        try:
            with transaction.atomic():
                answers.append(slow(request()))
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert claimed.wait(10)
        with transaction.atomic():
            list(Order.objects.filter(reference="other"))  # the snapshot starts here
            duplicate = slow(request())
    finally:
        thread.join(10)
    assert answers[0].status_code == 201
    assert duplicate.status_code == 201, duplicate.content
    assert duplicate["Idempotent-Replayed"] == "true"
    assert Order.objects.filter(reference="nested").count() == 1
