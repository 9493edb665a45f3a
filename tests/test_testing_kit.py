"""The test kit (django_idempotency.testing) on real views: it passes views that keep the
promises and names the promise that a miswired view breaks.

The broken views live here, under this module's own URLconf (``@pytest.mark.urls``):
an unguarded one, one scoped globally, a home-made check-then-set guard that only a race
exposes, and one whose headers a wrapper changes on every response.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, TestCase, TransactionTestCase
from django.urls import include, path

from django_idempotency.decorators import idempotent
from django_idempotency.scopes import global_scope
from django_idempotency.testing import (
    IdempotencyCheckFailed,
    IdempotencyChecks,
    check_idempotent,
    failing,
)
from tests.conftest import needs_drf
from tests.testapp import views
from tests.testapp.models import Charge, Order

ROOT = Path(__file__).resolve().parent.parent
ORDER = {"reference": "kit", "amount": 3}
COUNTER = {"runs": 0}
NAIVE: dict[str, tuple[int, bytes]] = {}
NAIVE_LOCK = threading.Lock()


@idempotent(scope=global_scope)
def leaky(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"id": Order.objects.create(reference="leaky").pk}, status=201)


def stamped(request: HttpRequest) -> HttpResponse:
    """A wrapper outside the guard that stamps every answer anew, as a middleware may."""
    response = views.create_order(request)
    response["X-Request-Id"] = str(uuid.uuid4())
    return response


def naive(request: HttpRequest) -> HttpResponse:
    """A home-made guard: look the key up, do the work, remember the answer. Retries in
    sequence replay; duplicates at the same instant all find nothing and all run."""
    key = request.headers["Idempotency-Key"]
    with NAIVE_LOCK:
        known = NAIVE.get(key)
    if known is not None:
        response = HttpResponse(known[1], status=known[0], content_type="application/json")
        response["Idempotent-Replayed"] = "true"
        return response
    time.sleep(0.3)
    with NAIVE_LOCK:
        COUNTER["runs"] += 1
        body = json.dumps({"run": COUNTER["runs"]}).encode()
        NAIVE[key] = (201, body)
    return HttpResponse(body, status=201, content_type="application/json")


urlpatterns = [
    path("kit/leaky/", leaky),
    path("kit/stamped/", stamped),
    path("kit/naive/", naive),
    path("", include("tests.urls")),
]
here = pytest.mark.urls(__name__)


def orders() -> int:
    return Order.objects.count()


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def raises(check: str, match: str) -> Any:
    return pytest.raises(IdempotencyCheckFailed, match=rf"^{check}: (.|\n)*{match}")


@contextmanager
def control(**values: Any) -> Iterator[None]:
    saved = dict(views.CONTROL)
    views.CONTROL.update(values)
    try:
        yield
    finally:
        views.CONTROL.clear()
        views.CONTROL.update(saved)


# Replay: first run and the retry.


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["/orders/", "/orders/single/", "/orders/nonatomic/", "/orders/template/"]
)
def test_replay_passes_each_mode(client: Client, url: str) -> None:
    replay = IdempotencyChecks(client, "post", url, ORDER, side_effects=orders).replay()
    assert replay.replayed
    assert replay.status == 201


@pytest.mark.django_db
def test_replay_fails_an_unguarded_view(client: Client) -> None:
    with raises("replay", "was not a replay"):
        IdempotencyChecks(client, "post", "/orders/bare/", ORDER, side_effects=orders).replay()


@pytest.mark.django_db
def test_replay_fails_when_side_effects_counts_nothing(client: Client) -> None:
    with raises("replay", "the first run left side_effects at 0"):
        IdempotencyChecks(client, "post", "/orders/", ORDER, side_effects=lambda: 0).replay()


@pytest.mark.django_db
def test_replay_fails_a_status_other_than_the_one_expected(client: Client) -> None:
    with raises("replay", "answered 201, not 200"):
        IdempotencyChecks(client, "post", "/orders/", ORDER, status=200).replay()


@here
@pytest.mark.django_db
def test_replay_compares_the_stored_headers_unless_told_to_ignore_one(client: Client) -> None:
    with raises("replay", "X-Request-Id"):
        IdempotencyChecks(client, "post", "/kit/stamped/", ORDER).replay()
    checks = IdempotencyChecks(
        client, "post", "/kit/stamped/", ORDER, ignore_headers=["x-request-id"]
    )
    assert checks.replay().header("X-Order-Id") == checks.report.first.header("X-Order-Id")


# Key reuse.


@pytest.mark.django_db
def test_key_reuse_gets_422_and_runs_nothing(client: Client) -> None:
    checks = IdempotencyChecks(client, "post", "/orders/", ORDER, side_effects=orders)
    reused = checks.key_reuse()
    assert reused.status == 422
    assert orders() == 1
    assert checks.report.passed == ["replay", "key_reuse"]


@pytest.mark.django_db
def test_key_reuse_of_a_body_that_is_not_a_dict_changes_the_query(client: Client) -> None:
    reused = IdempotencyChecks(client, "post", "/orders/?a=1", "plain text").key_reuse()
    assert reused.problem_type.endswith("idempotency-key-reused")


@pytest.mark.django_db
def test_key_reuse_fails_a_fingerprint_that_sees_nothing(client: Client) -> None:
    with raises("key_reuse", "not answered 422"):
        IdempotencyChecks(client, "post", "/orders/loose/", ORDER).key_reuse()


# Another user.


@pytest.mark.django_db
def test_other_user_runs_anew_on_a_view_scoped_per_user(alice: User, bob: User) -> None:
    checks = IdempotencyChecks(logged_in(alice), "post", "/orders/", ORDER, side_effects=orders)
    theirs = checks.other_user(logged_in(bob))
    assert not theirs.replayed
    assert orders() == 2


@needs_drf
@pytest.mark.django_db
def test_other_user_on_a_drf_viewset_with_api_clients(alice: User, bob: User) -> None:
    from rest_framework.test import APIClient

    first, second = APIClient(), APIClient()
    first.force_authenticate(alice)
    second.force_authenticate(bob)
    checks = IdempotencyChecks(first, "post", "/api/orders/", ORDER, side_effects=orders)
    checks.other_user(lambda: second)
    assert sorted(Order.objects.values_list("owner", flat=True)) == sorted(
        [str(alice.pk), str(bob.pk)]
    )


@here
@pytest.mark.django_db
def test_other_user_fails_a_view_scoped_globally(alice: User, bob: User) -> None:
    checks = IdempotencyChecks(logged_in(alice), "post", "/kit/leaky/", ORDER)
    with raises("other_user", "keys are not scoped per user"):
        checks.other_user(logged_in(bob))


# A failing attempt.


@pytest.mark.django_db
def test_failure_the_retry_runs_again_after_a_raise(client: Client) -> None:
    checks = IdempotencyChecks(client, "post", "/orders/", ORDER, side_effects=orders)
    retry = checks.failure(failing("tests.testapp.views._created"))
    assert not retry.replayed
    assert isinstance(checks.report.failed_attempt.error, RuntimeError)
    assert orders() == 2  # the replay check's and the retry's; the failure rolled back


@pytest.mark.django_db
def test_failure_by_a_5xx_answer(client: Client) -> None:
    checks = IdempotencyChecks(client, "post", "/orders/flaky/", ORDER, side_effects=orders)
    checks.failure(lambda: control(fail="503"))
    assert checks.report.failed_attempt.status == 503


@pytest.mark.django_db
def test_failure_after_an_idempotent_external_call(client: Client) -> None:
    """atomic=False: the charge stays after the crash; the retry sends the same derived
    key, so one run's worth of charges in all."""
    checks = IdempotencyChecks(
        client, "post", "/charges/", {"amount": 5}, side_effects=Charge.objects.count
    )
    checks.failure(control(crash_after_charge=True))
    assert json.loads(checks.report.retry.body)["attempt"] == 2
    assert Charge.objects.count() == 2  # the replay check's charge and this one


@pytest.mark.django_db
def test_failure_flags_a_side_effect_done_twice(client: Client) -> None:
    """atomic=False with a side effect that is not idempotent by itself: the order of the
    failed attempt stays, and the retry creates another."""
    checks = IdempotencyChecks(client, "post", "/orders/nonatomic/", ORDER, side_effects=orders)
    with raises("failure", "changed side_effects by 2"):
        checks.failure(failing("tests.testapp.views._created"))


@pytest.mark.django_db
def test_failure_needs_a_fail_that_fails(client: Client) -> None:
    checks = IdempotencyChecks(client, "post", "/orders/", ORDER)
    with raises("failure", "did not fail"):
        checks.failure(failing("tests.testapp.views.time.sleep"))


# The race.


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["/orders/", "/orders/single/"])
def test_race_runs_the_view_once(client: Client, url: str) -> None:
    with control(sleep=0.2):
        race = IdempotencyChecks(client, "post", url, ORDER, side_effects=orders).race(6)
    assert race.ran + (0 if race.follow_up.replayed else 1) == 1
    assert race.ran + race.conflicts + race.replays == 6
    assert bool(race.note) == (connection.vendor == "sqlite")


@here
@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_race_exposes_a_check_then_set_guard(client: Client) -> None:
    NAIVE.clear()
    checks = IdempotencyChecks(
        client, "post", "/kit/naive/", ORDER, side_effects=lambda: COUNTER["runs"]
    )
    checks.replay()  # in sequence it looks right
    with raises("race", "concurrent duplicates ran the view"):
        checks.race(4)


@pytest.mark.django_db
def test_race_inside_a_test_transaction_says_what_to_use(client: Client) -> None:
    with pytest.raises(RuntimeError, match="TransactionTestCase"):
        IdempotencyChecks(client, "post", "/orders/", ORDER).race(4)


# Everything at once, through the pytest plugin's fixtures.


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_the_fixture_runs_every_check(idempotency_check: Any, alice: User, bob: User) -> None:
    report = idempotency_check(
        logged_in(alice),
        "post",
        "/orders/",
        lambda key: {"reference": key, "amount": 1},
        side_effects=orders,
        other_client=lambda: logged_in(bob),
        fail=failing("tests.testapp.views._created"),
        race=4,
    )
    assert report.passed == ["replay", "key_reuse", "other_user", "failure", "race"]
    assert "race: 4 threads" in str(report)


def test_the_checks_fixture_gives_database_access(idempotency_checks: Any, client: Client) -> None:
    assert idempotency_checks(client, "post", "/orders/", ORDER).replay().replayed


def test_the_plugin_is_registered_by_its_entry_point(request: pytest.FixtureRequest) -> None:
    assert (
        'django_idempotency = "django_idempotency.pytest_plugin"'
        in (ROOT / "pyproject.toml").read_text()
    )
    assert request.config.pluginmanager.hasplugin("django_idempotency")


def test_the_plugin_is_harmless_where_nothing_uses_it(tmp_path: Path) -> None:
    """A project without Django settings: the plugin loads, imports nothing of Django's
    models or the package's engine, and its tests run as before."""
    (tmp_path / "test_other.py").write_text(
        "import sys\n"
        "def test_nothing_imported():\n"
        "    assert 'django_idempotency.pytest_plugin' in sys.modules\n"
        "    assert not [m for m in sys.modules if m.startswith(('django_idempotency.models',"
        " 'django_idempotency.testing', 'django.db.models'))]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# Django's own test cases.


class KitInATestCase(TestCase):
    def test_every_check_but_the_race(self) -> None:
        alice = User.objects.create_user("alice")
        bob = User.objects.create_user("bob")
        self.client.force_login(alice)
        report = check_idempotent(
            self.client,
            "post",
            "/orders/",
            ORDER,
            side_effects=orders,
            other_client=lambda: logged_in(bob),
            fail=failing("tests.testapp.views._created"),
        )
        self.assertEqual(report.passed, ["replay", "key_reuse", "other_user", "failure"])
        with self.assertRaisesRegex(RuntimeError, "TransactionTestCase"):
            check_idempotent(self.client, "post", "/orders/", ORDER, race=4)


@pytest.mark.concurrency
class KitInATransactionTestCase(TransactionTestCase):
    def test_the_race_too(self) -> None:
        with control(sleep=0.1):
            report = check_idempotent(
                self.client, "post", "/orders/", ORDER, side_effects=orders, race=4
            )
        self.assertEqual(report.passed, ["replay", "key_reuse", "race"])
