"""The generated OpenAPI schema against the running app: schemathesis finds no holes.

schemathesis generates requests from the schema drf-spectacular serves for guarded
DRF views (a viewset with ``@extend_schema``, an ``@api_view`` over ``@idempotent``)
and checks every answer against it: status codes, media types, required headers and
bodies. Valid keys (the header's ``pattern``), malformed ones, reused ones, replays and
DRF's own validation errors all come back as documented. The run is small and
derandomized, so it is fast and always the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.test import override_settings
from django.urls import path

pytest.importorskip("rest_framework", reason="Django REST framework is not installed")
pytest.importorskip("drf_spectacular", reason="drf-spectacular is not installed")
pytest.importorskip("schemathesis", reason="schemathesis is not installed")
pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is not installed")

import openapi_spec_validator
import schemathesis
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from rest_framework import serializers, viewsets
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import django_idempotency.openapi  # noqa: F401  (registers the extensions)
from django_idempotency.decorators import idempotent
from django_idempotency.drf import ConditionalUpdateMixin, IdempotentMixin
from django_idempotency.models import IdempotencyRecord, Status
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.strategy_tables import article_table, articles  # noqa: F401  (fixtures)
from tests.testapp.models import Order
from tests.testapp.strategy_models import Article

pytestmark = pytest.mark.django_db

SPECTACULAR = {
    **getattr(settings, "REST_FRAMEWORK", {}),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
fuzz = hypothesis_settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# As in a project that sets DEFAULT_SCHEMA_CLASS: @extend_schema builds on it.
with override_settings(REST_FRAMEWORK=SPECTACULAR):

    class FuzzOrderSerializer(serializers.ModelSerializer[Order]):
        class Meta:
            model = Order
            fields = ["id", "reference", "amount"]

    class FuzzOrders(IdempotentMixin, viewsets.ModelViewSet[Order]):
        """Orders; placing or changing one needs a key."""

        queryset = Order.objects.all()
        serializer_class = FuzzOrderSerializer
        authentication_classes: list[Any] = []
        permission_classes = [AllowAny]
        idempotent_actions = {"create", "partial_update"}
        idempotency_required = True

        @extend_schema(summary="Place an order")
        def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
            return super().create(request, *args, **kwargs)

    class FuzzArticleSerializer(serializers.ModelSerializer[Article]):
        class Meta:
            model = Article
            fields = ["id", "title", "body", "version"]
            read_only_fields = ["version"]

    class FuzzArticles(IdempotentMixin, ConditionalUpdateMixin, viewsets.ModelViewSet[Article]):
        """Articles: changing one needs its ETag in If-Match; a key is optional."""

        queryset = Article.objects.all()
        serializer_class = FuzzArticleSerializer
        authentication_classes: list[Any] = []
        permission_classes = [AllowAny]

    @extend_schema(summary="Place an order", request=FuzzOrderSerializer)
    @extend_schema(responses={201: FuzzOrderSerializer})
    @api_view(["POST"])
    @authentication_classes([])
    @permission_classes([AllowAny])
    @idempotent(required=True)
    def place_order(request: Request) -> Response:
        serializer = FuzzOrderSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        serializer.save()
        return Response(serializer.data, status=201)


API = [
    path("orders/", FuzzOrders.as_view({"get": "list", "post": "create"})),
    path("orders/<int:pk>/", FuzzOrders.as_view({"get": "retrieve", "patch": "partial_update"})),
    path("place/", place_order),
    path(
        "articles/<int:pk>/", FuzzArticles.as_view({"get": "retrieve", "patch": "partial_update"})
    ),
]
urlpatterns = [*API, path("schema/", SpectacularAPIView.as_view(urlconf=API))]


def sendable(case: Any) -> bool:
    """Not a form body that is not a mapping: schemathesis 4.30's WSGI transport (the last
    release for Python 3.10) crashes on those before sending anything."""
    return case.media_type == "application/json" or isinstance(case.body, (dict, NotSet))


@pytest.fixture
def api(settings: Any) -> Iterator[Any]:
    """The schema as the app serves it; schemathesis sends its requests to the same app.

    The test's connection stays open across requests (a real WSGI handler closes it at
    the end of each, the test client does not): the test runs in one transaction.
    """
    settings.ROOT_URLCONF = __name__
    settings.REST_FRAMEWORK = SPECTACULAR
    signals = (request_started, request_finished)
    for signal in signals:
        signal.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/schema/?format=json", WSGIHandler())
    finally:
        for signal in signals:
            signal.connect(close_old_connections)


def test_the_served_schema_is_valid_openapi(api: Any) -> None:
    openapi_spec_validator.validate(api.raw_schema)


@pytest.mark.parametrize(
    ("route", "method", "mode"),
    [
        *[
            (route, method, mode)
            for route, method in [
                ("/orders/", "POST"),
                ("/orders/{id}/", "PATCH"),
                ("/place/", "POST"),
                ("/articles/{id}/", "PATCH"),
            ]
            for mode in ["positive", "negative"]
        ],
        ("/orders/", "GET", "positive"),
    ],
)
@pytest.mark.usefixtures("articles")
def test_schemathesis_finds_nothing(api: Any, route: str, method: str, mode: str) -> None:
    if route.startswith("/articles/"):
        existing: Any = Article.objects.create(title="existing")
    else:
        existing = Order.objects.create(reference="existing")
    operation = api[route][method]
    strategy = operation.as_strategy(
        generation_mode=schemathesis.GenerationMode(mode),
        path_parameters={"id": existing.pk} if "{id}" in route else None,
    ).filter(sendable)

    @fuzz
    @given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    run()
    assert not IdempotencyRecord.objects.filter(status=Status.IN_PROGRESS).exists()


BODY = {"reference": "r-1", "amount": 3}
REPLAYED_BODY = b'{"id": 1, "reference": "r-1", "amount": 3}'


def same_request(**traits: Any) -> Any:
    """A record for ``POST /orders/`` with ``BODY``, as the guard would have stored it."""
    return IdempotencyRecordFactory(
        key="k-1", fingerprint=request_fingerprint(path="/orders/", data=BODY), **traits
    )


@pytest.mark.parametrize(
    ("earlier", "key", "status"),
    [
        (lambda: None, "a,b", 400),
        (same_request, "k-1", 409),
        (lambda: same_request(completed=True, response_body=REPLAYED_BODY), "k-1", 201),
        (lambda: same_request(completed=True, response_body=None), "k-1", 303),
        (lambda: IdempotencyRecordFactory(key="k-1"), "k-1", 422),
    ],
    ids=["malformed", "in-progress", "replay", "not-stored", "reused"],
)
def test_every_answer_of_the_guard_conforms(api: Any, earlier: Any, key: str, status: int) -> None:
    earlier()
    case = api["/orders/"]["POST"].Case(
        body=BODY, media_type="application/json", headers={"Idempotency-Key": key}
    )

    response = case.call_and_validate(checks=CHECKS)

    assert response.status_code == status


def test_413_conforms(api: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10
    case = api["/orders/"]["POST"].Case(
        body=BODY, media_type="application/json", headers={"Idempotency-Key": "k-1"}
    )

    assert case.call_and_validate(checks=CHECKS).status_code == 413


@pytest.mark.django_db(transaction=True)
def test_503_conforms(api: Any) -> None:
    table = IdempotencyRecord._meta.db_table
    case = api["/orders/"]["POST"].Case(
        body=BODY, media_type="application/json", headers={"Idempotency-Key": "k-1"}
    )
    with connection.schema_editor(atomic=False) as editor:
        editor.alter_db_table(IdempotencyRecord, table, table + "_away")
    try:  # a documented 5xx: every check but not_a_server_error
        response = case.call_and_validate(checks=CHECKS[1:])
    finally:
        with connection.schema_editor(atomic=False) as editor:
            editor.alter_db_table(IdempotencyRecord, table + "_away", table)

    assert response.status_code == 503
