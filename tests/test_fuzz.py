"""Fuzzing bad input: header values, bodies, content types, methods and paths.

Whatever a client sends, the guard answers without a 500, leaves no record in a wrong
state (no IN_PROGRESS once the request is over, no record for a rejected key) and,
when the key is at fault, answers 400 with problem+json.

The default run is bounded (``FUZZ_EXAMPLES``, default 100 examples per test);
``HYPOTHESIS_PROFILE=full`` runs 3,000 per test (several minutes per database)::

    HYPOTHESIS_PROFILE=full .venv/bin/pytest tests/test_fuzz.py
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import string
import sys
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from django_idempotency import keys
from django_idempotency.models import IdempotencyRecord, Status
from tests.testapp.models import Order

FULL = os.environ.get("HYPOTHESIS_PROFILE") == "full"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (3000 if FULL else 100))

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not FULL,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
cheap = settings(fuzz, max_examples=EXAMPLES * 3)

# Without Django REST framework (CI: DRF=0) the DRF view is not mounted: the same tests
# run over the plain views, and its examples below are left out.
HAS_DRF = importlib.util.find_spec("rest_framework") is not None
GUARDED_VIEWS = [
    "/fuzz/two-phase/",
    "/fuzz/single/",
    "/fuzz/non-atomic/",
    *(["/fuzz/api/"] if HAS_DRF else []),
    "/fuzz/async/",
]
views = st.sampled_from(GUARDED_VIEWS)


def api_example(**kwargs: Any) -> Any:
    """``@example`` for the DRF view; nothing when DRF is not installed."""
    return example(**kwargs) if HAS_DRF else (lambda test: test)


PROBLEM = "application/problem+json"
VENDOR = os.environ.get("DATABASE_URL", "sqlite").split(":", 1)[0]

# ---------------------------------------------------------------- strategies

latin1 = st.characters(min_codepoint=0, max_codepoint=255)
printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
controls = st.sampled_from([chr(c) for c in [*range(0, 0x20), 0x7F, 0x85, 0xA0]])


def sf_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


tokens = st.text(printable, min_size=1, max_size=40)
header_values = st.one_of(
    st.text(latin1, max_size=300),
    tokens,
    st.text(printable, min_size=200, max_size=300),
    st.text(latin1, min_size=256, max_size=10_000),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300).map(sf_quote),
    st.text(latin1, max_size=40).map(lambda text: '"' + text + '"'),
    st.lists(tokens | tokens.map(sf_quote), min_size=2, max_size=5).map(", ".join),
    st.tuples(tokens, st.text(printable, max_size=10)).map(lambda pair: f"{pair[0]};{pair[1]}"),
    st.tuples(tokens, controls, tokens).map("".join),
    st.tuples(
        st.sampled_from(["", " ", "\t", "  \t"]), tokens, st.sampled_from(["", " ", "\t"])
    ).map("".join),
    st.just(""),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/problem+json",
        "application/json; charset=utf-8",
        "application/json; charset=bogus",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=latin-1",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data; boundary=",
        "text/plain",
        "application/octet-stream",
        "",
        "garbage",
        ";;;",
    ]
)
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [
            b"{",
            b'{"a": }',
            b"[1, 2",
            b"NaN",
            b'{"a": 1e999999}',
            b"9" * 5000,
            b"\xff\xfe\x00",
            b"a=1&b=2&a=3",
            b"%%%=%%%&&&",
            b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--\r\n',
            b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\r\n--xyz--\r\n",
            b"--xyz\r\n\r\n--",
        ]
    ),
)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "OPTIONS", "TRACE", "POST", "PUT", "PATCH", "DELETE", "post"]),
    st.text(st.sampled_from(string.ascii_uppercase), min_size=1, max_size=12),
)
# NUL has its own test below (test_a_nul_in_the_path_is_not_a_server_error).
path_chars = st.one_of(
    st.characters(codec="utf-8", exclude_characters="/?#\x00"),
    st.sampled_from(["%2F", "%FF", "%C3%A9", "%", "..", "\x7f", "\U0001f600"]),
)
path_tails = st.lists(path_chars, max_size=30).map("".join)


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def quiet_request_log(caplog: pytest.LogCaptureFixture) -> None:
    """Django logs every 4xx; thousands of them only slow the run down."""
    caplog.set_level(logging.CRITICAL, logger="django.request")


def reset() -> None:
    IdempotencyRecord.objects.all().delete()
    Order.objects.all().delete()


def send(
    client: Client,
    path: str,
    *,
    key: str | None,
    body: bytes = b"{}",
    content_type: str = "application/json",
    method: str = "POST",
) -> Any:
    extra: dict[str, Any] = {}
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    return client.generic(method, path, data=body, content_type=content_type, **extra)


def expected_key(raw: str) -> str | None:
    try:
        return keys.parse_key(raw)
    except keys.InvalidKey:
        return None


def assert_no_in_progress() -> None:
    left = list(IdempotencyRecord.objects.filter(status=Status.IN_PROGRESS).values("key", "route"))
    assert left == [], f"records left IN_PROGRESS after the request: {left}"


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == PROBLEM
    assert response["Cache-Control"] == "no-store"
    problem: dict[str, Any] = json.loads(response.content)
    assert problem["status"] == status
    assert problem["type"].endswith(slug)
    assert problem["title"]
    assert problem["detail"]
    return problem


def assert_rejected_key(response: Any) -> None:
    assert_problem(response, 400, "idempotency-key-invalid")
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


def assert_ran_once(response: Any, key: str, status: int = 201) -> IdempotencyRecord:
    assert response.status_code == status, response.content[:300]
    assert_no_in_progress()
    record = IdempotencyRecord.objects.get()
    assert record.key == key
    assert record.status == Status.COMPLETED
    assert Order.objects.count() == 1
    return record


def assert_replay(first: Any, second: Any) -> None:
    assert second.status_code == first.status_code
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


# ---------------------------------------------------------------- the key


@cheap
@given(raw=header_values | st.text(max_size=400))
def test_parse_key_returns_a_valid_key_or_raises_invalid_key(raw: str) -> None:
    try:
        key = keys.parse_key(raw)
    except keys.InvalidKey as exc:
        assert str(exc)
        return
    assert key is not None
    assert 1 <= len(key) <= keys.MAX_KEY_LENGTH
    assert all(" " <= char <= "~" for char in key)


@cheap
@given(token=st.text(printable, min_size=1, max_size=255))
def test_a_bare_token_and_its_quoted_form_are_one_key(token: str) -> None:
    if token.startswith('"') or "," in token or ";" in token:
        return
    assert keys.parse_key(token) == token
    assert keys.parse_key(sf_quote(token)) == token
    assert keys.parse_key(f" \t{token}\t ") == token


@pytest.mark.django_db
@fuzz
@given(path=views, raw=header_values)
@example(path="/fuzz/two-phase/", raw="")
@api_example(path="/fuzz/api/", raw="a" * 256)
@api_example(path="/fuzz/api/", raw='"a" , "b"')
@api_example(path="/fuzz/api/", raw="key\x00")
@api_example(path="/fuzz/api/", raw='"\\x"')
def test_any_header_value_runs_once_or_is_rejected_with_a_problem(path: str, raw: str) -> None:
    reset()
    client = Client()
    key = expected_key(raw)
    first = send(client, path, key=raw)
    if key is None:
        assert_rejected_key(first)
        return
    assert_ran_once(first, key)
    assert_replay(first, send(client, path, key=raw))


@pytest.mark.django_db
@fuzz
@given(token=st.text(printable, min_size=1, max_size=60))
def test_quoted_and_bare_forms_replay_each_other(token: str) -> None:
    if token.startswith('"') or "," in token or ";" in token:
        return
    reset()
    client = Client()
    first = send(client, "/fuzz/two-phase/", key=token)
    assert_ran_once(first, token)
    assert_replay(first, send(client, "/fuzz/two-phase/", key=sf_quote(token)))


# ---------------------------------------------------------------- bodies


@pytest.mark.django_db
@fuzz
@given(path=views, body=bodies, content_type=content_types)
def test_any_body_and_content_type_never_breaks_the_guard(
    path: str, body: bytes, content_type: str
) -> None:
    reset()
    client = Client()
    first = send(client, path, key="body-key", body=body, content_type=content_type)
    assert first.status_code < 500, first.content[:300]
    assert_no_in_progress()
    if first.status_code >= 400:
        # The body, not the key, was at fault (a DRF parse error, a broken multipart):
        # nothing ran and nothing is remembered, so a fixed retry can run.
        assert IdempotencyRecord.objects.count() == 0
        assert Order.objects.count() == 0
        return
    assert_ran_once(first, "body-key")
    second = send(client, path, key="body-key", body=body, content_type=content_type)
    assert_replay(first, second)


@pytest.mark.django_db
@fuzz
@given(first=json_values, second=json_values)
def test_the_same_key_with_another_json_payload_is_422(first: Any, second: Any) -> None:
    reset()
    client = Client()
    one = send(client, "/fuzz/two-phase/", key="k", body=json.dumps({"v": first}).encode())
    assert_ran_once(one, "k")
    two = send(client, "/fuzz/two-phase/", key="k", body=json.dumps({"v": second}).encode())
    if json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True):
        assert_replay(one, two)
    else:
        assert_problem(two, 422, "idempotency-key-reused")
        assert Order.objects.count() == 1


LIMIT = sys.getrecursionlimit()


def nested(shape: str, depth: int) -> bytes:
    close = "]" if shape == "[" else "}"
    return (shape * depth + "1" + close * depth).encode()


@pytest.mark.django_db
@pytest.mark.parametrize("shape", ["[", '{"a":'])
@pytest.mark.parametrize("depth", [1, 100, LIMIT // 2, LIMIT * 5, LIMIT * 100])
def test_deeply_nested_json_is_fingerprinted(shape: str, depth: int) -> None:
    client = Client()
    body = nested(shape, depth)
    response = send(client, "/fuzz/two-phase/", key="deep", body=body)
    assert_ran_once(response, "deep")
    assert_replay(response, send(client, "/fuzz/two-phase/", key="deep", body=body))


@pytest.mark.django_db
@pytest.mark.parametrize("shape", ["[", '{"a":'])
def test_json_nested_just_below_the_recursion_limit_is_not_a_500(shape: str) -> None:
    client = Client()
    for depth in range(LIMIT - 150, LIMIT):
        reset()
        response = send(client, "/fuzz/two-phase/", key="deep", body=nested(shape, depth))
        assert response.status_code == 201, (depth, response.content[:200])
        assert_no_in_progress()


# ---------------------------------------------------------------- huge bodies


@pytest.fixture
def small_limits(settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    settings.IDEMPOTENCY = {"MAX_RESPONSE_BYTES": 1_000}


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limits")
@fuzz
@given(size=st.integers(2_001, 50_000), content_type=content_types)
def test_a_body_past_data_upload_max_memory_size_leaves_no_record(
    size: int, content_type: str
) -> None:
    """The view reads ``request.body``: Django answers 400 and the attempt is forgotten."""
    reset()
    client = Client()
    response = send(
        client, "/fuzz/reads-body/", key="huge", body=b"x" * size, content_type=content_type
    )
    assert 400 <= response.status_code < 500
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limits")
def test_two_different_huge_bodies_under_one_key_are_not_one_intent() -> None:
    client = Client()
    first = send(client, "/fuzz/two-phase/", key="huge", body=b"a" * 5_000)
    assert first.status_code < 500
    second = send(client, "/fuzz/two-phase/", key="huge", body=b"b" * 5_000)
    assert second.status_code in {413, 422} or first.status_code in {413}
    assert second.get("Idempotent-Replayed") is None
    assert Order.objects.count() <= 1


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limits")
@settings(fuzz, max_examples=max(EXAMPLES // 4, 10))
@given(size=st.integers(0, 5_000))
@example(size=1_000)
@example(size=1_001)
def test_a_response_past_max_response_bytes_completes_and_replays_303(size: int) -> None:
    reset()
    client = Client()
    first = send(client, f"/fuzz/big/?size={size}", key="big")
    assert_ran_once(first, "big")
    assert len(first.content) == size
    second = send(client, f"/fuzz/big/?size={size}", key="big")
    if size <= 1_000:
        assert_replay(first, second)
        return
    problem = assert_problem(second, 303, "idempotency-response-not-stored")
    assert problem["response_status"] == 201
    assert second["Location"] == first["Location"]
    assert second["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get().response_body is None
    assert Order.objects.count() == 1


# ---------------------------------------------------------------- methods and paths


@pytest.mark.django_db
@fuzz
@given(path=views, method=methods, raw=st.none() | header_values)
def test_any_method_is_guarded_or_passed_through(path: str, method: str, raw: str | None) -> None:
    reset()
    client = Client()
    response = send(client, path, key=raw, method=method)
    assert response.status_code < 500, response.content[:300]
    assert_no_in_progress()
    if response.status_code == 405:  # DRF: no handler, refused before the guard
        assert IdempotencyRecord.objects.count() == 0
        return
    guarded = method.upper() in {"POST", "PUT", "PATCH", "DELETE"}
    if guarded and raw is not None and expected_key(raw) is None:
        assert_rejected_key(response)
    elif not guarded or raw is None:
        assert IdempotencyRecord.objects.count() == 0
    elif response.status_code < 400:
        assert IdempotencyRecord.objects.get().method == method.upper()


@pytest.mark.django_db
@fuzz
@given(prefix=st.sampled_from([v for v in GUARDED_VIEWS if v != "/fuzz/api/"]), tail=path_tails)
@example(prefix="/fuzz/two-phase/", tail="x" * 300)
@example(prefix="/fuzz/single/", tail="\U0001f600" * 100)
def test_any_path_is_stored_and_replayed(prefix: str, tail: str) -> None:
    reset()
    client = Client()
    path = prefix + tail
    response = send(client, path, key="path-key")
    assert response.status_code < 500, response.content[:300]
    assert_no_in_progress()
    if response.status_code == 404:
        assert IdempotencyRecord.objects.count() == 0
        return
    record = assert_ran_once(response, "path-key")
    assert len(record.route) <= 255
    assert_replay(response, send(client, path, key="path-key"))


@pytest.mark.django_db
def test_an_unguarded_method_or_no_key_passes_through_without_a_record() -> None:
    client = Client()
    for method, key in [("GET", "k"), ("OPTIONS", "k"), ("POST", None)]:
        response = send(client, "/fuzz/two-phase/", key=key, method=method)
        assert response.status_code == 201
    assert IdempotencyRecord.objects.count() == 0
    assert Order.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "key"), [("POST", None), ("GET", "k")])
def test_an_atomic_false_view_without_a_key_is_not_a_500(method: str, key: str | None) -> None:
    response = send(Client(), "/fuzz/non-atomic-documented/", key=key, method=method)
    assert response.status_code < 500


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", ["/fuzz/two-phase/", "/fuzz/single/", "/fuzz/non-atomic/"])
def test_a_nul_in_the_path_is_not_a_server_error(prefix: str) -> None:
    client = Client()
    response = send(client, prefix + "a%00b", key="nul")
    assert response.status_code < 500, response.content[:300]
    assert_no_in_progress()


# ---------------------------------------------------------------- the status endpoint


@pytest.mark.django_db
@fuzz
@given(values=st.lists(st.text(max_size=300) | header_values, max_size=3))
def test_any_status_query_is_answered_with_json_or_a_problem(values: list[str]) -> None:
    response = Client().get("/idempotency/operations/", {"key": values})
    assert response.status_code in {400, 404}, response.content[:300]
    assert response["Cache-Control"] == "no-store"
    problem = assert_problem(response, response.status_code, "")
    assert problem["type"]


@pytest.mark.django_db
@fuzz
@given(tail=path_tails)
def test_any_operation_id_is_answered_without_a_server_error(tail: str) -> None:
    response = Client().get(f"/idempotency/operations/{tail}/")
    assert response.status_code in {400, 404}, response.content[:300]
