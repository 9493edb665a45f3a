"""drf-spectacular: guarded operations document Idempotency-Key, If-Match and their problems."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import include, path

pytest.importorskip("rest_framework", reason="Django REST framework is not installed")
pytest.importorskip("drf_spectacular", reason="drf-spectacular is not installed")

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework import serializers, viewsets
from rest_framework.request import Request

import django_idempotency.openapi  # noqa: F401  (registers the extensions)
from django_idempotency.drf import IdempotentMixin
from tests.testapp.models import Order

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = {"$ref": "#/components/schemas/IdempotencyProblem"}


class KeyedOrderSerializer(serializers.ModelSerializer[Order]):
    class Meta:
        model = Order
        fields = ["id", "reference", "amount"]


class RequiredKeyViewSet(IdempotentMixin, viewsets.ModelViewSet[Order]):
    queryset = Order.objects.all()
    serializer_class = KeyedOrderSerializer
    idempotent_actions = {"create"}
    idempotency_required = True


class OptionalKeyViewSet(IdempotentMixin, viewsets.ModelViewSet[Order]):
    """Orders, keyed if the client wants."""

    queryset = Order.objects.all()
    serializer_class = KeyedOrderSerializer


class NaturalKeyViewSet(IdempotentMixin, viewsets.ModelViewSet[Order]):
    queryset = Order.objects.all()
    serializer_class = KeyedOrderSerializer
    idempotent_actions = {"create"}

    def get_idempotency_key(self, request: Request) -> str | None:
        return str(request.data.get("reference"))


class PlainViewSet(viewsets.ModelViewSet[Order]):
    queryset = Order.objects.all()
    serializer_class = KeyedOrderSerializer


def routes(prefix: str, viewset: Any) -> list[Any]:
    return [
        path(f"{prefix}/", viewset.as_view({"get": "list", "post": "create"})),
        path(
            f"{prefix}/<int:pk>/",
            viewset.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        ),
    ]


PATTERNS = [
    *routes("required", RequiredKeyViewSet),
    *routes("optional", OptionalKeyViewSet),
    *routes("natural", NaturalKeyViewSet),
    *routes("plain", PlainViewSet),
    path("strategies/", include("tests.testapp.strategy_views")),
]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    rest_framework = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    }
    with override_settings(REST_FRAMEWORK=rest_framework):
        generated: dict[str, Any] = SchemaGenerator(patterns=PATTERNS).get_schema(
            request=None, public=True
        )
    return generated


def header(operation: dict[str, Any], name: str) -> dict[str, Any] | None:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "header" and parameter["name"] == name:
            return parameter  # type: ignore[no-any-return]
    return None


def problem_statuses(operation: dict[str, Any]) -> set[str]:
    return {
        status
        for status, response in operation["responses"].items()
        if response.get("content", {}).get("application/problem+json", {}).get("schema") == PROBLEM
    }


def test_the_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    validate_schema(schema)
    assert schema["components"]["schemas"]["IdempotencyProblem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
    ]


def test_a_required_key_is_a_required_header_with_its_problems(schema: dict[str, Any]) -> None:
    create = schema["paths"]["/required/"]["post"]

    parameter = header(create, "Idempotency-Key")
    assert parameter is not None
    assert parameter["required"] is True
    assert parameter["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
    assert problem_statuses(create) == {"400", "409", "422"}
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]


def test_only_the_guarded_actions_are_documented(schema: dict[str, Any]) -> None:
    update = schema["paths"]["/required/{id}/"]["patch"]
    assert header(update, "Idempotency-Key") is None
    assert not problem_statuses(update)
    assert header(schema["paths"]["/required/"]["get"], "Idempotency-Key") is None


def test_an_optional_key_follows_the_setting(schema: dict[str, Any]) -> None:
    for method, route in [("post", "/optional/"), ("patch", "/optional/{id}/")]:
        parameter = header(schema["paths"][route][method], "Idempotency-Key")
        assert parameter is not None
        assert parameter["required"] is False
    assert header(schema["paths"]["/optional/{id}/"]["get"], "Idempotency-Key") is None


def test_the_required_setting_is_read_when_the_view_does_not_say(settings: Any) -> None:
    settings.IDEMPOTENCY = {"REQUIRED": True, "HEADER": "X-Request-Key"}
    rest_framework = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    }
    with override_settings(REST_FRAMEWORK=rest_framework):
        generated = SchemaGenerator(patterns=routes("optional", OptionalKeyViewSet)).get_schema(
            request=None, public=True
        )
    parameter = header(generated["paths"]["/optional/"]["post"], "X-Request-Key")
    assert parameter is not None
    assert parameter["required"] is True


def test_a_natural_key_has_no_header_but_keeps_409_and_422(schema: dict[str, Any]) -> None:
    create = schema["paths"]["/natural/"]["post"]
    assert header(create, "Idempotency-Key") is None
    assert problem_statuses(create) == {"409", "422"}


def test_unguarded_views_are_untouched(schema: dict[str, Any]) -> None:
    for operation in schema["paths"]["/plain/"].values():
        assert header(operation, "Idempotency-Key") is None
        assert not problem_statuses(operation)


def test_descriptions_come_from_the_view_not_from_our_mixins(schema: dict[str, Any]) -> None:
    assert "description" not in schema["paths"]["/required/"]["post"]
    assert "description" not in schema["paths"]["/strategies/api/articles/{id}/"]["patch"]
    assert schema["paths"]["/optional/"]["post"]["description"] == (
        "Orders, keyed if the client wants."
    )


def test_conditional_updates_document_if_match_412_428_and_etag(schema: dict[str, Any]) -> None:
    detail = schema["paths"]["/strategies/api/articles/{id}/"]

    patch = detail["patch"]
    if_match = header(patch, "If-Match")
    assert if_match is not None
    assert if_match["required"] is True
    assert {"400", "409", "412", "422", "428"} <= problem_statuses(patch)
    assert header(patch, "Idempotency-Key") is not None  # both mixins on one view
    assert set(patch["responses"]["200"]["headers"]) == {"ETag", "Idempotent-Replayed"}
    assert "ETag" in detail["get"]["responses"]["200"]["headers"]
    assert header(detail["get"], "If-Match") is None
    # The list route is not conditional.
    assert header(schema["paths"]["/strategies/api/articles/"]["post"], "If-Match") is None


def test_an_optional_precondition_has_no_428(schema: dict[str, Any]) -> None:
    patch = schema["paths"]["/strategies/api/plain-articles/{id}/"]["patch"]
    if_match = header(patch, "If-Match")
    assert if_match is not None
    assert if_match["required"] is False
    assert "428" not in problem_statuses(patch)
    assert "412" in problem_statuses(patch)


def test_the_extensions_register_when_the_app_is_ready() -> None:
    script = (
        "import django; django.setup()\n"
        "from drf_spectacular.extensions import OpenApiViewExtension\n"
        "names = {e.__name__ for e in OpenApiViewExtension._registry}\n"
        "print('IdempotentViewExtension' in names)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
