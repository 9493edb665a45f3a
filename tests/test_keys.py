"""Reading the key (RFC 9651 String or bare token), scopes and fingerprints."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory

from django_idempotency import keys
from django_idempotency.models import IdempotencyRecord
from tests.factories import request_fingerprint
from tests.testapp.models import Order

INVALID_KEYS = {
    "empty": "",
    "blank": "   ",
    "empty string": '""',
    "256 characters": "k" * 256,
    "256 characters quoted": '"' + "k" * 256 + '"',
    "non-ASCII": "ключ",
    "latin-1 byte": "caf\xe9",
    "non-ASCII quoted": '"caf\xe9"',
    "tab inside": "a\tb",
    "tab inside quoted": '"a\tb"',
    "NUL": "a\x00b",
    "control character": "a\x01b",
    "DEL": "a\x7fb",
    "newline": "a\nb",
    "space inside": "a b",
    "space inside quoted": '"a b"',
    "only spaces quoted": '"   "',
    "list of strings": '"a", "b"',
    "list of tokens": "a, b",
    "list, trailing comma": '"a",',
    "parameters on a string": '"a";x=1',
    "parameters on a token": "a;x=1",
    "unterminated quote": '"abc',
    "lone quote": '"',
    "bad escape": '"a\\nb"',
    "dangling backslash": '"abc\\',
    "junk after the string": '"a" b',
}


@pytest.mark.parametrize("raw", list(INVALID_KEYS.values()), ids=list(INVALID_KEYS))
def test_malformed_keys_are_rejected(raw: str) -> None:
    with pytest.raises(keys.InvalidKey):
        keys.parse_key(raw)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ("  abc\t", "abc"),
        (' "abc" ', "abc"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ("k" * 255, "k" * 255),
        ('"' + "k" * 255 + '"', "k" * 255),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("!#$%&'*+-.^_`|~:/?@[]{}<>=", "!#$%&'*+-.^_`|~:/?@[]{}<>="),
        ("Mixed-Case", "Mixed-Case"),
    ],
)
def test_valid_keys(raw: str, key: str) -> None:
    assert keys.parse_key(raw) == key


def test_no_header_is_no_key() -> None:
    assert keys.parse_key(None) is None


# The column's rules: one function for header keys and workers' keys.


def test_the_length_limit_is_the_columns() -> None:
    limit = IdempotencyRecord._meta.get_field("key").max_length
    assert limit == keys.MAX_KEY_LENGTH
    assert IdempotencyRecord._meta.get_field("scope").max_length == keys.MAX_SCOPE_LENGTH
    assert keys.fit_key("k" * limit) == "k" * limit
    with pytest.raises(keys.InvalidKey, match=f"longer than {limit}"):
        keys.fit_key("k" * (limit + 1))


UNFIT_FOR_THE_COLUMN = {
    "empty": "",
    "NUL": "a\x00b",
    "C0": "a\x01b",
    "tab": "a\tb",
    "newline": "a\nb",
    "DEL": "a\x7fb",
    "C1": "a\x9fb",
    "leading space": " a",
    "trailing space": "a ",
    "trailing ideographic space": "a\u3000",
    "lone surrogate": "a\udfff",
}


@pytest.mark.parametrize("key", list(UNFIT_FOR_THE_COLUMN.values()), ids=list(UNFIT_FOR_THE_COLUMN))
def test_fit_key_refuses_what_the_column_cannot_hold(key: str) -> None:
    with pytest.raises(keys.InvalidKey):
        keys.fit_key(key)


@pytest.mark.parametrize("key", ["a b", "Müller", "注文:42", "\U0001f9fe", "x" * 255])
def test_fit_key_keeps_keys_that_fit_unchanged(key: str) -> None:
    assert keys.fit_key(key) == key


def test_parse_key_applies_the_column_rules_too() -> None:
    """The header rules are stricter (printable ASCII) and end in ``fit_key``."""
    with mock.patch.object(keys, "fit_key", wraps=keys.fit_key) as fit:
        assert keys.parse_key('"abc"') == "abc"
    fit.assert_called_once_with("abc")


# Over HTTP: a malformed key is a 400 problem, nothing runs and nothing is stored.


@pytest.mark.django_db
@pytest.mark.parametrize("raw", list(INVALID_KEYS.values()), ids=list(INVALID_KEYS))
def test_malformed_key_gets_400_problem(client, raw: str) -> None:
    response = client.post(
        "/orders/", data="{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY=raw
    )
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    problem = response.json()
    assert problem["type"].endswith("idempotency-key-invalid")
    assert problem["status"] == 400
    assert problem["title"]
    assert problem["detail"]
    assert Order.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.django_db
def test_quoted_and_bare_key_are_the_same_record(post) -> None:
    first = post("/orders/", {"amount": 1}, key='"abc"')
    again = post("/orders/", {"amount": 1}, key="abc")
    assert first.status_code == 201
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert Order.objects.count() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["abc"]


@pytest.mark.django_db
def test_escaped_quote_key_is_stored_unescaped(post) -> None:
    first = post("/orders/", {}, key='"a\\"b"')
    again = post("/orders/", {}, key='a"b')
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get().key == 'a"b'


@pytest.mark.django_db
def test_longest_key_works(post) -> None:
    key = "k" * 255
    assert post("/orders/", {}, key=key).status_code == 201
    assert post("/orders/", {}, key=key)["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get().key == key


@pytest.mark.django_db
def test_keys_are_case_sensitive(post) -> None:
    """On MariaDB the key column's collation must be binary, or "abc" would replay "ABC"."""
    lower = post("/orders/", {}, key="abc")
    upper = post("/orders/", {}, key="ABC")
    assert lower.status_code == upper.status_code == 201
    assert "Idempotent-Replayed" not in upper
    assert Order.objects.count() == 2
    assert sorted(IdempotencyRecord.objects.values_list("key", flat=True)) == ["ABC", "abc"]


@pytest.mark.django_db
def test_trailing_space_is_not_another_key(post) -> None:
    """Header values lose their surrounding white space; "abc " and "abc" are one key."""
    post("/orders/", {}, key="abc")
    assert post("/orders/", {}, key="abc ")["Idempotent-Replayed"] == "true"


# Fingerprints.


def _fingerprint(method="POST", path="/orders/", body="", content_type="application/json"):
    request = RequestFactory().generic(method, path, data=body, content_type=content_type)
    return keys.fingerprint(request)


def test_json_key_order_and_white_space_do_not_matter() -> None:
    assert _fingerprint(body='{"a":1,"b":2}') == _fingerprint(body='{"b": 2, "a": 1}')
    assert _fingerprint(body='{"a":{"x":1,"y":[1,2]}}') == _fingerprint(
        body='{ "a" : { "y" : [1, 2], "x" : 1 } }'
    )


def test_json_values_and_list_order_matter() -> None:
    assert _fingerprint(body='{"a":1}') != _fingerprint(body='{"a":2}')
    assert _fingerprint(body='{"a":[1,2]}') != _fingerprint(body='{"a":[2,1]}')
    assert _fingerprint(body='{"a":1}') != _fingerprint(body='{"a":"1"}')


def test_method_route_and_query_are_part_of_the_fingerprint() -> None:
    base = _fingerprint(body="{}")
    assert _fingerprint(method="PUT", body="{}") != base
    assert _fingerprint(path="/orders/required/", body="{}") != base
    assert _fingerprint(path="/orders/1/pay/", body="{}") != _fingerprint(
        path="/orders/2/pay/", body="{}"
    )
    assert _fingerprint(path="/orders/?x=1", body="{}") != base
    assert _fingerprint(path="/orders/?x=1", body="{}") != _fingerprint(
        path="/orders/?x=2", body="{}"
    )


def test_query_parameter_order_does_not_matter() -> None:
    assert _fingerprint(path="/orders/?a=1&b=2") == _fingerprint(path="/orders/?b=2&a=1")


def test_form_field_order_does_not_matter() -> None:
    form = "application/x-www-form-urlencoded"
    assert _fingerprint(body="a=1&b=2", content_type=form) == _fingerprint(
        body="b=2&a=1", content_type=form
    )
    assert _fingerprint(body="a=1&b=2", content_type=form) != _fingerprint(
        body="a=1&b=3", content_type=form
    )


def test_multipart_fields_and_file_contents_count() -> None:
    def multipart(content: bytes, note: str) -> str:
        upload = SimpleUploadedFile("a.txt", content)
        request = RequestFactory().post("/orders/", data={"note": note, "file": upload})
        return keys.fingerprint(request)

    assert multipart(b"one", "x") == multipart(b"one", "x")
    assert multipart(b"one", "x") != multipart(b"two", "x")
    assert multipart(b"one", "x") != multipart(b"one", "y")


def test_other_bodies_are_compared_as_bytes() -> None:
    plain = "text/plain"
    assert _fingerprint(body="a b", content_type=plain) == _fingerprint(
        body="a b", content_type=plain
    )
    assert _fingerprint(body="a b", content_type=plain) != _fingerprint(
        body="a  b", content_type=plain
    )


def test_invalid_json_falls_back_to_bytes() -> None:
    assert _fingerprint(body="{not json") == _fingerprint(body="{not json")
    assert _fingerprint(body="{not json") != _fingerprint(body="{not json!")


def test_factory_fingerprint_matches_the_guard() -> None:
    assert request_fingerprint(data={"b": 2, "a": 1}) == _fingerprint(body='{"a":1,"b":2}')


# Scopes and payload hashes.


def test_long_scope_is_hashed_to_fit_the_column() -> None:
    long = "tenant:" + "x" * 300
    scope = keys.compute_scope(None, lambda request: long)
    assert scope.startswith("sha256:")
    assert len(scope) <= keys.MAX_SCOPE_LENGTH
    assert scope == keys.compute_scope(None, lambda request: long)
    assert scope != keys.compute_scope(None, lambda request: long + "y")


def test_scope_of_exactly_255_characters_is_kept() -> None:
    scope = "s" * 255
    assert keys.compute_scope(None, lambda request: scope) == scope


@pytest.mark.parametrize("scope", ["tenant:\x00", "tenant:\ud800", "t" * 256])
def test_scopes_the_column_cannot_hold_are_hashed(scope: str) -> None:
    fitted = keys.compute_scope(None, lambda request: scope)
    assert fitted.startswith("sha256:")
    assert fitted == keys.fit_scope(scope)
    assert fitted.encode("utf-8")


def test_scope_ending_in_a_space_is_hashed() -> None:
    """So that PAD SPACE collations cannot make "acme " and "acme" one scope."""
    padded = keys.compute_scope(None, lambda request: "tenant:acme ")
    assert padded.startswith("sha256:")
    assert padded != keys.compute_scope(None, lambda request: "tenant:acme")
    assert keys.compute_scope(None, lambda request: " tenant:acme") == " tenant:acme"


def test_payload_hash_is_stable_and_body_sensitive() -> None:
    def key(body: dict) -> str:
        return keys.payload_hash(
            RequestFactory().post("/hooks/", data=json.dumps(body), content_type="application/json")
        )

    assert key({"a": 1, "b": 2}) == key({"b": 2, "a": 1})
    assert key({"a": 1}) != key({"a": 2})
    assert keys.parse_key(key({"a": 1})) == key({"a": 1})
