"""The store down, or failing at a checkpoint, is the store's fault: 503, never a 500."""

from __future__ import annotations

import pytest
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path

from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord
from tests.conftest import assert_problem, needs_drf, send
from tests.testapp.models import Order

TABLE = IdempotencyRecord._meta.db_table
AWAY = TABLE + "_away"


def _rename(new: str, old: str) -> None:
    with connection.schema_editor(atomic=False) as editor:
        editor.alter_db_table(IdempotencyRecord, old, new)


def _checkpoint_without_a_store(request: HttpRequest) -> HttpResponse:
    _rename(AWAY, TABLE)
    request.idempotency.checkpoint("charged")  # type: ignore[attr-defined]
    return HttpResponse("unreachable", status=201)


urlpatterns = [
    path("non-atomic/", idempotent(atomic=False)(_checkpoint_without_a_store)),
]


@pytest.fixture
def restore_table():
    yield
    if AWAY in connection.introspection.table_names():
        _rename(TABLE, AWAY)


@pytest.mark.urls(__name__)
@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_that_cannot_be_written_is_a_503(restore_table) -> None:
    response = Client(raise_request_exception=False).post(
        "/non-atomic/", {}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("idempotency-unavailable")


# The records' table gone for every guarded path, and back.


@pytest.fixture
def records_table_gone():
    _rename(AWAY, TABLE)
    try:
        yield
    finally:
        _rename(TABLE, AWAY)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path",
    [
        "/orders/",
        "/orders/single/",
        "/orders/nonatomic/",
        "/orders/async/",
        pytest.param("/api/plain/", marks=needs_drf),
    ],
)
def test_store_unreachable_is_503_not_500(records_table_gone, path) -> None:
    client = Client(raise_request_exception=False)
    response = send(client, path, {}, key="k1")
    assert_problem(response, 503, "idempotency-unavailable")
    assert int(response["Retry-After"]) >= 1
    assert Order.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_store_back_after_an_outage(post) -> None:
    _rename(AWAY, TABLE)
    try:
        assert post("/orders/", {}, key="k1").status_code == 503
    finally:
        _rename(TABLE, AWAY)
    assert post("/orders/", {}, key="k1").status_code == 201
    assert post("/orders/", {}, key="k1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
