"""Conditional updates: ETag out, If-Match in; 428 / 412 / the write and its bump, atomically."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client

from django_idempotency.conditional import (
    _ANY,
    InvalidIfMatch,
    conditional_update,
    parse_if_match,
    quote_etag,
)
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyRecord
from tests.strategy_tables import article_table, articles  # noqa: F401  (fixtures)
from tests.testapp.models import Order
from tests.testapp.strategy_models import Article
from tests.testapp.strategy_views import order_etag
from tests.testapp.views import CONTROL

pytestmark = pytest.mark.usefixtures("articles")
needs_drf = pytest.mark.skipif(
    importlib.util.find_spec("rest_framework") is None, reason="needs Django REST framework"
)

API = "/strategies/api/articles/"
PLAIN = "/strategies/articles/"
PROBLEM_BASE = "https://django-idempotency.readthedocs.io/en/latest/reference/problems/#"


def send(
    client: Client,
    method: str,
    path: str,
    data: Any = None,
    *,
    if_match: str | None = None,
    key: str | None = None,
) -> Any:
    headers = {}
    if if_match is not None:
        headers["HTTP_IF_MATCH"] = if_match
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    body = json.dumps(data) if data is not None else ""
    return getattr(client, method)(path, data=body, content_type="application/json", **headers)


def problem(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    body: dict[str, Any] = json.loads(response.content)
    return body


class TestParseIfMatch:
    @pytest.mark.parametrize(
        ("header", "tags"),
        [
            ('"3"', {'"3"'}),
            (' "3" ', {'"3"'}),
            ('"1", "2"', {'"1"', '"2"'}),
            ('"1","2",,"3"', {'"1"', '"2"', '"3"'}),
            ('W/"1", "2"', {'"2"'}),
            ('W/"1"', set()),
            ('""', {'""'}),
            ('"a-b_c.d~e"', {'"a-b_c.d~e"'}),
        ],
    )
    def test_lists_strong_tags_and_drops_weak_ones(self, header: str, tags: set[str]) -> None:
        parsed = parse_if_match(header)
        assert parsed is not None
        assert not parsed.any
        assert parsed.tags == tags

    def test_absent_and_star(self) -> None:
        assert parse_if_match(None) is None
        assert parse_if_match("*") == _ANY

    @pytest.mark.parametrize("header", ["", "3", '"3', '"1" "2"', "W/3", '"a b"', '*, "1"'])
    def test_anything_else_is_invalid(self, header: str) -> None:
        with pytest.raises(InvalidIfMatch):
            parse_if_match(header)

    def test_comparison_is_strong_and_star_needs_a_representation(self) -> None:
        parsed = parse_if_match('W/"1", "2"')
        assert parsed is not None
        assert not parsed.matches('"1"')
        assert parsed.matches('"2"')
        assert _ANY.matches('"anything"')
        assert not _ANY.matches(None)

    def test_quote_etag_refuses_what_cannot_be_quoted(self) -> None:
        assert quote_etag(3) == '"3"'
        with pytest.raises(ValueError):
            quote_etag('a"b')
        with pytest.raises(ValueError):
            quote_etag("a b")


@pytest.fixture
def article(db: None) -> Article:
    return Article.objects.create(title="draft")


@needs_drf
@pytest.mark.django_db
class TestDrfMixin:
    def test_get_carries_the_etag(self, client: Client, article: Article) -> None:
        response = client.get(f"{API}{article.pk}/")
        assert response.status_code == 200
        assert response["ETag"] == '"1"'

    def test_a_list_carries_no_etag(self, client: Client, article: Article) -> None:
        assert not client.get(API).has_header("ETag")

    def test_an_update_without_if_match_is_428(self, client: Client, article: Article) -> None:
        response = send(client, "patch", f"{API}{article.pk}/", {"title": "x"}, key="k1")

        assert response.status_code == 428
        body = problem(response)
        assert body["type"] == PROBLEM_BASE + "precondition-required"
        assert body["status"] == 428
        assert "If-Match" in body["detail"]
        article.refresh_from_db()
        assert (article.title, article.version) == ("draft", 1)
        assert not IdempotencyRecord.objects.exists()

    def test_a_stale_etag_is_412_with_the_current_one(
        self, client: Client, article: Article
    ) -> None:
        Article.objects.filter(pk=article.pk).update(version=5)

        response = send(client, "patch", f"{API}{article.pk}/", {"title": "x"}, if_match='"1"')

        assert response.status_code == 412
        assert response["ETag"] == '"5"'
        body = problem(response)
        assert body["type"] == PROBLEM_BASE + "precondition-failed"
        assert body["etag"] == '"5"'
        article.refresh_from_db()
        assert (article.title, article.version) == ("draft", 5)

    def test_a_match_writes_and_bumps_the_version(self, client: Client, article: Article) -> None:
        response = send(client, "patch", f"{API}{article.pk}/", {"title": "v2"}, if_match='"1"')

        assert response.status_code == 200, response.content
        assert response["ETag"] == '"2"'
        assert response.json() == {"id": article.pk, "title": "v2", "body": "", "version": 2}
        article.refresh_from_db()
        assert (article.title, article.version) == ("v2", 2)

    @pytest.mark.parametrize(
        ("header", "status"),
        [('W/"1"', 412), ("*", 200), ('"7", "1"', 200), ('"abc"', 412), ('"1.0"', 412)],
    )
    def test_if_match_forms(
        self, client: Client, article: Article, header: str, status: int
    ) -> None:
        response = send(client, "put", f"{API}{article.pk}/", {"title": "t"}, if_match=header)

        assert response.status_code == status
        article.refresh_from_db()
        assert article.version == (2 if status == 200 else 1)

    def test_a_malformed_if_match_is_400(self, client: Client, article: Article) -> None:
        response = send(client, "patch", f"{API}{article.pk}/", {"title": "x"}, if_match="1")

        assert response.status_code == 400
        assert problem(response)["type"] == PROBLEM_BASE + "if-match-invalid"

    def test_a_validation_error_rolls_the_bump_back(self, client: Client, article: Article) -> None:
        response = send(
            client, "patch", f"{API}{article.pk}/", {"title": "x" * 101}, if_match='"1"'
        )

        assert response.status_code == 400
        article.refresh_from_db()
        assert article.version == 1

    def test_a_retried_update_with_the_same_key_replays_instead_of_412(
        self, client: Client, article: Article
    ) -> None:
        first = send(
            client, "patch", f"{API}{article.pk}/", {"title": "v2"}, if_match='"1"', key="edit-1"
        )
        retry = send(
            client, "patch", f"{API}{article.pk}/", {"title": "v2"}, if_match='"1"', key="edit-1"
        )

        assert first.status_code == retry.status_code == 200
        assert retry["Idempotent-Replayed"] == "true"
        assert retry["ETag"] == '"2"'
        assert retry.content == first.content
        article.refresh_from_db()
        assert article.version == 2

    def test_a_412_is_not_stored_under_the_key(self, client: Client, article: Article) -> None:
        Article.objects.filter(pk=article.pk).update(version=2)
        stale = send(
            client, "patch", f"{API}{article.pk}/", {"title": "v3"}, if_match='"1"', key="edit-2"
        )
        fresh = send(
            client, "patch", f"{API}{article.pk}/", {"title": "v3"}, if_match='"2"', key="edit-2"
        )

        assert stale.status_code == 412
        assert fresh.status_code == 200
        assert not fresh.has_header("Idempotent-Replayed")
        assert fresh["ETag"] == '"3"'

    def test_delete_needs_if_match(self, client: Client, article: Article) -> None:
        assert send(client, "delete", f"{API}{article.pk}/").status_code == 428
        response = send(client, "delete", f"{API}{article.pk}/", if_match='"1"')

        assert response.status_code == 204
        assert not response.has_header("ETag")
        assert not Article.objects.exists()

    def test_a_custom_detail_action_is_conditional_too(
        self, client: Client, article: Article
    ) -> None:
        path = f"{API}{article.pk}/publish/"
        assert send(client, "post", path).status_code == 428
        assert send(client, "post", path, if_match='"9"').status_code == 412
        response = send(client, "post", path, if_match='"1"')

        assert response.status_code == 200
        assert response["ETag"] == '"2"'
        article.refresh_from_db()
        assert (article.title, article.version) == ("DRAFT", 2)

    def test_create_on_the_list_route_is_not_conditional(self, client: Client) -> None:
        response = send(client, "post", API, {"title": "new"})
        assert response.status_code == 201
        assert Article.objects.get().version == 1

    def test_a_missing_object_is_404(self, client: Client) -> None:
        assert (
            send(client, "patch", f"{API}999/", {"title": "x"}, if_match='"1"').status_code == 404
        )

    def test_the_mixins_work_in_either_order(self, client: Client, article: Article) -> None:
        path = f"/strategies/api/reversed-articles/{article.pk}/"
        assert send(client, "patch", path, {"title": "x"}).status_code == 428
        first = send(client, "patch", path, {"title": "v2"}, if_match='"1"', key="r")
        retry = send(client, "patch", path, {"title": "v2"}, if_match='"1"', key="r")

        assert first.status_code == 200
        assert retry["Idempotent-Replayed"] == "true"
        article.refresh_from_db()
        assert article.version == 2

    def test_optional_precondition_still_moves_the_version(
        self, client: Client, article: Article
    ) -> None:
        path = f"/strategies/api/plain-articles/{article.pk}/"
        # The serializer lets clients write "version"; the mixin ignores it.
        response = send(client, "patch", path, {"title": "v2", "version": 99})

        assert response.status_code == 200
        assert response["ETag"] == '"2"'
        article.refresh_from_db()
        assert article.version == 2
        assert send(client, "patch", path, {"title": "v3"}, if_match='"1"').status_code == 412

    def test_a_computed_etag(self, client: Client) -> None:
        order = Order.objects.create(reference="a", amount=1)
        path = f"/strategies/api/computed-orders/{order.pk}/"
        etag = client.get(path)["ETag"]
        assert etag == quote_etag(order_etag(order))

        response = send(client, "patch", path, {"reference": "b"}, if_match=etag)
        assert response.status_code == 200
        order.refresh_from_db()
        assert response["ETag"] == quote_etag(order_etag(order)) != etag
        assert send(client, "patch", path, {"reference": "c"}, if_match=etag).status_code == 412
        order.refresh_from_db()
        assert order.reference == "b"


@pytest.mark.django_db
class TestPlainViewDecorator:
    def test_get_carries_the_etag(self, client: Client, article: Article) -> None:
        assert client.get(f"{PLAIN}{article.pk}/")["ETag"] == '"1"'

    def test_428_names_the_current_etag(self, client: Client, article: Article) -> None:
        response = send(client, "patch", f"{PLAIN}{article.pk}/", {"title": "x"})

        assert response.status_code == 428
        assert response["ETag"] == '"1"'
        assert '"1"' in problem(response)["detail"]

    def test_stale_match_and_replay(self, client: Client, article: Article) -> None:
        path = f"{PLAIN}{article.pk}/"
        assert send(client, "patch", path, {"title": "x"}, if_match='"0"').status_code == 412
        first = send(client, "patch", path, {"title": "v2"}, if_match='"1"', key="p1")
        retry = send(client, "patch", path, {"title": "v2"}, if_match='"1"', key="p1")

        assert first.status_code == 200
        assert first["ETag"] == '"2"'
        assert retry["Idempotent-Replayed"] == "true"
        assert retry["ETag"] == '"2"'
        article.refresh_from_db()
        assert (article.title, article.version) == ("v2", 2)

    def test_an_error_answer_rolls_back_the_bump_and_the_writes(
        self, client: Client, article: Article
    ) -> None:
        response = send(client, "patch", f"{PLAIN}{article.pk}/", {"title": ""}, if_match='"1"')

        assert response.status_code == 400
        article.refresh_from_db()
        assert (article.body, article.version) == ("", 1)

    def test_delete(self, client: Client, article: Article) -> None:
        response = send(client, "delete", f"{PLAIN}{article.pk}/", if_match='"1"')
        assert response.status_code == 204
        assert not response.has_header("ETag")
        assert not Article.objects.exists()

    def test_a_missing_object_is_404(self, client: Client) -> None:
        assert (
            send(client, "patch", f"{PLAIN}999/", {"title": "x"}, if_match='"1"').status_code == 404
        )

    def test_a_computed_etag_without_requiring_if_match(self, client: Client) -> None:
        order = Order.objects.create(reference="a")
        path = f"/strategies/orders/{order.pk}/etag/"
        etag = client.get(path)["ETag"]

        assert send(client, "put", path, {"reference": "b"}).status_code == 200
        assert send(client, "put", path, {"reference": "c"}, if_match=etag).status_code == 412
        order.refresh_from_db()
        assert order.reference == "b"

    def test_idempotent_must_be_the_outer_decorator(self) -> None:
        @idempotent
        def view(request: Any, pk: int) -> Any: ...

        with pytest.raises(ImproperlyConfigured, match="above"):
            conditional_update(Article)(view)

    def test_async_views_are_refused(self) -> None:
        async def view(request: Any, pk: int) -> Any: ...

        with pytest.raises(ImproperlyConfigured, match="synchronous"):
            conditional_update(Article)(view)


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite serialises writers; race tested on PG/MariaDB"
)
@pytest.mark.parametrize(
    "path",
    [pytest.param(API, marks=needs_drf), PLAIN],
    ids=["drf-mixin", "plain-decorator"],
)
def test_competing_writers_with_one_etag_exactly_one_wins(path: str) -> None:
    """Six editors read version 1 and save at once: one 200, five 412, no lost update."""
    article = Article.objects.create(title="draft")
    CONTROL["sleep"] = 0.2  # the winner holds its transaction open while the others arrive
    writers = 6
    barrier = threading.Barrier(writers)
    results: dict[int, tuple[int, str | None]] = {}
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            client = Client()
            barrier.wait(timeout=10)
            response = send(
                client, "patch", f"{path}{article.pk}/", {"title": f"w{n}"}, if_match='"1"'
            )
            results[n] = (response.status_code, response.get("ETag"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    _run_threads(write, writers)

    assert not errors, errors
    statuses = sorted(status for status, _ in results.values())
    assert statuses == [200] + [412] * (writers - 1)
    winner = next(n for n, (status, _) in results.items() if status == 200)
    article.refresh_from_db()
    assert (article.title, article.version) == (f"w{winner}", 2)
    assert {etag for _, etag in results.values()} == {'"2"'}


def _run_threads(target: Callable[[int], None], count: int) -> None:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
