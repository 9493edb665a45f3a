"""The fingerprint reads every body the same way, whatever the method.

Django parses forms into ``request.POST`` for POST only; a PUT or PATCH form used to be
fingerprinted without its fields, so the same key with another form replayed the first
answer and dropped the change. Each method is crossed with each content type here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from io import BytesIO
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParser
from django.test import Client, RequestFactory
from django.test.client import encode_multipart
from django.urls import path

from django_idempotency import keys
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord
from tests.conftest import needs_drf, send
from tests.testapp.models import Order
from tests.urls import urlpatterns as base_urlpatterns

METHODS = ["POST", "PUT", "PATCH", "DELETE"]
FORM = "application/x-www-form-urlencoded"
OCTETS = "application/octet-stream"


def multipart(fields: dict[str, Any], boundary: str = "h2-boundary") -> tuple[bytes, str]:
    body = encode_multipart(boundary, fields)
    return body, f"multipart/form-data; boundary={boundary}"


def upload(content: bytes, name: str = "a.txt") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/plain")


def bodies(kind: str, variant: str) -> tuple[bytes | str, str]:
    """``(body, content type)``; ``"same"`` is ``"one"`` spelt differently on the wire."""
    if kind == "json":
        return {
            "one": '{"a": 1, "b": [1, 2]}',
            "same": '{ "b": [1, 2],  "a": 1 }',
            "other": '{"a": 2, "b": [1, 2]}',
        }[variant], "application/json"
    if kind == "urlencoded":
        return {"one": "a=1&b=2&b=3", "same": "b=2&a=1&b=3", "other": "a=1&b=2&b=4"}[variant], FORM
    if kind == "multipart":
        if variant == "other":
            return multipart({"note": "x", "file": upload(b"two")})
        boundary = "h2-boundary" if variant == "one" else "another-boundary"
        return multipart({"note": "x", "file": upload(b"one")}, boundary)
    assert kind == "octets"
    return {"one": b"\x00\x01\xff", "same": b"\x00\x01\xff", "other": b"\x00\x01\xfe"}[
        variant
    ], OCTETS


KINDS = ["json", "urlencoded", "multipart", "octets"]


def request(method: str, kind: str, variant: str, path: str = "/orders/") -> HttpRequest:
    body, content_type = bodies(kind, variant)
    return RequestFactory().generic(method, path, data=body, content_type=content_type)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_the_same_body_has_the_same_fingerprint(method: str, kind: str) -> None:
    assert keys.fingerprint(request(method, kind, "one")) == keys.fingerprint(
        request(method, kind, "same")
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_another_body_has_another_fingerprint(method: str, kind: str) -> None:
    assert keys.fingerprint(request(method, kind, "one")) != keys.fingerprint(
        request(method, kind, "other")
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_every_method_reads_the_body_as_post_does(method: str, kind: str) -> None:
    """The same canonical body: only the method tells the fingerprints apart."""
    assert keys._canonical_body(request(method, kind, "one")) == keys._canonical_body(
        request("POST", kind, "one")
    )


@pytest.mark.django_db
@pytest.mark.parametrize("method", METHODS)
def test_a_multipart_body_django_cannot_parse_is_400_for_every_method(
    client: Client, method: str
) -> None:
    """Without a boundary Django refuses a POST form (400); every method is refused alike,
    and nothing is stored."""
    refused = send(
        client,
        "/orders/",
        "--x\r\n",
        key="k-1",
        method=method.lower(),
        content_type="multipart/form-data",
    )
    assert refused.status_code == 400
    assert not IdempotencyRecord.objects.exists()
    assert not Order.objects.exists()


@needs_drf
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_a_drf_request_has_the_fingerprint_of_its_http_request(method: str, kind: str) -> None:
    from rest_framework.request import Request

    plain = keys.fingerprint(request(method, kind, "one"))
    assert keys.fingerprint(Request(request(method, kind, "one"))) == plain


@needs_drf
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_a_drf_request_parsed_before_the_fingerprint_counts_its_form(method: str) -> None:
    """A parser that read the stream first leaves DRF's parse; it must still count."""
    from rest_framework.parsers import FormParser, MultiPartParser
    from rest_framework.request import Request

    def parsed_first(variant: str) -> str:
        drf = Request(request(method, "multipart", variant), parsers=[MultiPartParser()])
        assert drf.data["note"] == "x"
        return keys.fingerprint(drf)

    assert parsed_first("one") == parsed_first("same")
    assert parsed_first("one") != parsed_first("other")
    form = Request(request(method, "urlencoded", "one"), parsers=[FormParser()])
    assert form.data["a"] == "1"
    assert keys._canonical_body(form) == keys._canonical_body(request(method, "urlencoded", "one"))


@pytest.mark.parametrize("method", METHODS)
def test_the_body_stays_readable_after_fingerprinting(method: str) -> None:
    content = b"the upload"
    body, content_type = multipart({"note": "x", "file": upload(content)})
    incoming = RequestFactory().generic(method, "/orders/", data=body, content_type=content_type)

    keys.fingerprint(incoming)
    keys.fingerprint(incoming)  # the guard's key lookup and the fingerprint share a parse

    fields, files = _uploaded(incoming)
    assert fields["note"] == "x"
    assert files["file"].read() == content


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
def test_the_form_field_carries_the_key_for_every_method(method: str, kind: str) -> None:
    if kind == "urlencoded":
        body, content_type = "idempotency_key=k-1&amount=3", FORM
    else:
        body, content_type = multipart({"idempotency_key": "k-1", "amount": "3"})
    incoming = RequestFactory().generic(method, "/orders/", data=body, content_type=content_type)
    assert keys.sent_key(incoming) == "k-1"


def test_two_form_fields_are_a_list_for_every_method() -> None:
    incoming = RequestFactory().generic(
        "PUT", "/orders/", data="idempotency_key=a&idempotency_key=b", content_type=FORM
    )
    with pytest.raises(keys.InvalidKey, match="list"):
        keys.parse_key(keys.sent_key(incoming))


# Through HTTP: a guarded view that reads its body as Django allows (``request.POST``
# for a POST form, whose stream Django has consumed; ``request.body`` otherwise).


def _send(client: Client, method: str, kind: str, variant: str, key: str) -> Any:
    body, content_type = bodies(kind, variant)
    return send(
        client, "/h2/echo/", body, key=key, method=method.lower(), content_type=content_type
    )


@pytest.mark.django_db
@pytest.mark.urls(__name__)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_another_body_with_the_same_key_is_422_the_same_replays(
    client: Client, method: str, kind: str
) -> None:
    first = _send(client, method, kind, "one", "k-1")
    again = _send(client, method, kind, "same", "k-1")
    other = _send(client, method, kind, "other", "k-1")

    assert first.status_code == 201
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert other["Content-Type"] == "application/problem+json"
    assert "Idempotent-Replayed" not in other
    assert Order.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_a_put_form_without_a_header_is_deduplicated_by_its_field(
    client: Client, method: str
) -> None:
    form = f"idempotency_key=form-{method}&amount=3"
    first = send(client, "/orders/", form, method=method.lower(), content_type=FORM)
    again = send(client, "/orders/", form, method=method.lower(), content_type=FORM)
    other = send(
        client,
        "/orders/",
        f"idempotency_key=form-{method}&amount=4",
        method=method.lower(),
        content_type=FORM,
    )

    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert IdempotencyRecord.objects.get().key == f"form-{method}"


# Uploads through views that read them: Django's and DRF's.


def _uploaded(incoming: HttpRequest) -> tuple[Any, Any]:
    if incoming.method == "POST":
        return incoming.POST, incoming.FILES
    return MultiPartParser(incoming.META, BytesIO(incoming.body), incoming.upload_handlers).parse()


@idempotent
def read_upload(incoming: HttpRequest) -> HttpResponse:
    fields, files = _uploaded(incoming)
    data = files["file"].read()
    Order.objects.create(reference=fields["note"])
    return JsonResponse({"sha": hashlib.sha256(data).hexdigest(), "size": len(data)}, status=201)


@idempotent
def echo(incoming: HttpRequest) -> HttpResponse:
    if incoming.method == "POST" and incoming.content_type in keys._FORM_CONTENT_TYPES:
        size = sum(len(value) for value in incoming.POST.values())
    else:
        size = len(incoming.body)
    order = Order.objects.create(amount=size)
    return JsonResponse({"id": order.pk}, status=201)


urlpatterns = [path("h2/upload/", read_upload), path("h2/echo/", echo), *base_urlpatterns]

if importlib.util.find_spec("rest_framework") is not None:
    from rest_framework import parsers
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from django_idempotency.drf import IdempotentMixin

    class UploadView(IdempotentMixin, APIView):
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []
        parser_classes = [parsers.MultiPartParser, parsers.FormParser, parsers.JSONParser]

        def _read(self, incoming: Any) -> Response:
            data = incoming.data["file"].read()
            Order.objects.create(reference=incoming.data["note"])
            sha = hashlib.sha256(data).hexdigest()
            return Response({"sha": sha, "size": len(data)}, status=201)

        def post(self, incoming: Any) -> Response:
            return self._read(incoming)

        def put(self, incoming: Any) -> Response:
            return self._read(incoming)

        def patch(self, incoming: Any) -> Response:
            return self._read(incoming)

    urlpatterns.insert(0, path("h2/api/upload/", UploadView.as_view()))


def _upload(client: Client, url: str, method: str, content: bytes, key: str) -> Any:
    body, content_type = multipart({"note": "x", "file": upload(content)})
    return send(client, url, body, key=key, method=method.lower(), content_type=content_type)


UPLOAD_VIEWS = [
    pytest.param("/h2/upload/", METHODS, id="django"),
    pytest.param("/h2/api/upload/", ["POST", "PUT", "PATCH"], id="drf", marks=needs_drf),
]


@pytest.mark.django_db
@pytest.mark.urls(__name__)
@pytest.mark.parametrize(("url", "methods"), UPLOAD_VIEWS)
def test_the_view_still_reads_the_upload(client: Client, url: str, methods: list[str]) -> None:
    content = b"x" * 70_000  # more than one chunk of the upload handlers
    for number, method in enumerate(methods):
        key = f"upload-{number}"
        first = _upload(client, url, method, content, key)
        assert first.status_code == 201, first.content
        assert json.loads(first.content) == {
            "sha": hashlib.sha256(content).hexdigest(),
            "size": len(content),
        }
        assert _upload(client, url, method, content, key)["Idempotent-Replayed"] == "true"
        assert _upload(client, url, method, content + b"!", key).status_code == 422
    assert Order.objects.count() == len(methods)


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_a_put_upload_over_the_memory_limit_is_413_a_post_one_streams(
    client: Client, settings: Any
) -> None:
    """A PUT form is parsed from ``request.body``, which Django caps at
    ``DATA_UPLOAD_MAX_MEMORY_SIZE``; a POST form is Django's own streamed parse."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    content = b"y" * 20_000

    assert _upload(client, "/h2/upload/", "POST", content, "big-post").status_code == 201
    refused = _upload(client, "/h2/upload/", "PUT", content, "big-put")
    assert refused.status_code == 413
    assert refused["Content-Type"] == "application/problem+json"
    assert Order.objects.count() == 1
    assert IdempotencyRecord.objects.count() == 1
