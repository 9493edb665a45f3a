"""``Guard``, the HTTP side shared by ``@idempotent`` and the DRF mixin, driven directly:
the options it takes, the mode they choose, and how it waits for an attempt in progress.

The wait polls with pauses that double each time and never run past ``WAIT``; the
clock and the sleeps are the test's, so no test here waits.
"""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory, override_settings

from django_idempotency import engine
from django_idempotency import guard as guard_module
from django_idempotency.decorators import idempotent
from django_idempotency.guard import Guard, GuardOptions
from django_idempotency.operation import Executed, InProgress
from tests.conftest import needs_drf
from tests.factories import IdempotencyRecordFactory

# Choosing a mode: ``GuardOptions`` names the options once, for ``@idempotent``, the
# guard and the DRF mixin, so a new mode is one member of ``Mode`` and its option.


@pytest.mark.parametrize(
    ("options", "mode"),
    [
        ({}, engine.Mode.TWO_PHASE),
        ({"atomic": True, "single_transaction": False}, engine.Mode.TWO_PHASE),
        ({"single_transaction": True}, engine.Mode.SINGLE_TRANSACTION),
        ({"atomic": False}, engine.Mode.NON_ATOMIC),
    ],
)
def test_the_options_choose_the_mode(options, mode) -> None:
    assert Guard(**options).mode is mode
    assert idempotent(**options)(lambda request: None).idempotency_guard.mode is mode


def test_an_unknown_option_is_refused_where_the_view_is_decorated() -> None:
    with pytest.raises(TypeError, match="atomc"):
        idempotent(atomc=False)  # type: ignore[call-arg]


@needs_drf
def test_the_mixin_passes_every_attribute_it_declares_on() -> None:
    from rest_framework.views import APIView

    from django_idempotency.drf import IdempotentMixin

    declared = {
        name.removeprefix("idempotency_")
        for name in vars(IdempotentMixin)
        if name.startswith("idempotency_")
    }
    assert declared <= GuardOptions.__optional_keys__
    assert declared == set(IdempotentMixin._class_options())

    class View(IdempotentMixin, APIView):
        idempotency_atomic = False
        idempotency_required = True
        idempotency_lease = timedelta(seconds=30)

    guard = View().get_idempotency_guard()
    assert (guard.mode, guard.required, guard.lease) == (
        engine.Mode.NON_ATOMIC,
        True,
        timedelta(seconds=30),
    )
    assert guard.key.__func__ is View.get_idempotency_key  # the hooks come on top


def test_single_transaction_with_atomic_false_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured):
        idempotent(single_transaction=True, atomic=False)


# Waiting for an attempt in progress, in ``run`` and its async twin ``arun``.


class Clock:
    """``time.monotonic`` and the sleeps of ``guard``: each sleep moves the clock on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(guard_module, "time", clock)
    monkeypatch.setattr(guard_module, "asyncio", SimpleNamespace(sleep=clock.asleep))
    return clock


@pytest.fixture(params=["run", "arun"])
def answer(request: pytest.FixtureRequest) -> Any:
    """``answer(guard)``: what ``guard.run`` (or ``arun``) answers a keyed POST."""

    def call(guard: Guard) -> Any:
        http = RequestFactory().post(
            "/x/", data="{}", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k1"
        )
        http.user = AnonymousUser()

        def view() -> HttpResponse:
            raise AssertionError("the engine's outcome is the test's; the view never runs")

        if request.param == "run":
            return guard.run(http, view)
        return async_to_sync(guard.arun)(http, view)

    return call


def busy_then(guard: Guard, busy: int, then: Any = None) -> list[Any]:
    """``guard``'s engine answers InProgress ``busy`` times, then ``then`` (if given)."""
    record = IdempotencyRecordFactory.build()
    outcomes = [InProgress(record=record, retry_after=7)] * busy
    if then is not None:
        outcomes.append(then)
    calls: list[Any] = []

    def execute(*args: Any) -> Any:
        calls.append(args)
        return outcomes[min(len(calls), len(outcomes)) - 1]

    guard._execute = execute  # type: ignore[method-assign]
    return calls


def assert_busy(response: HttpResponse) -> None:
    """The 409 of an attempt in progress (a bare response: no test client's ``json()``)."""
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["type"].endswith("idempotency-request-in-progress")


@override_settings(IDEMPOTENCY={"WAIT": timedelta(seconds=10)})
def test_the_wait_polls_with_doubling_pauses_until_the_attempt_ends(clock, answer) -> None:
    guard = Guard()
    done = HttpResponse("from the first attempt", status=201)
    calls = busy_then(guard, 3, Executed(value=done, record=None))
    assert answer(guard) is done
    assert len(calls) == 4
    first = clock.pauses[0]
    assert first > 0
    assert clock.pauses == [first, first * 2, first * 4]


@override_settings(IDEMPOTENCY={"WAIT": timedelta(seconds=1)})
def test_the_wait_ends_at_its_deadline_with_the_409(clock, answer) -> None:
    guard = Guard()
    calls = busy_then(guard, 100)
    response = answer(guard)
    assert_busy(response)
    assert response["Retry-After"] == "7"
    *doubling, last = clock.pauses
    assert doubling[0] > 0
    assert doubling[1:] == [pause * 2 for pause in doubling[:-1]]
    assert 0 < last <= doubling[-1] * 2  # cut short at the deadline
    assert sum(clock.pauses) == pytest.approx(1.0)
    assert len(calls) == len(clock.pauses) + 1  # one last look at the deadline


def test_without_a_wait_the_409_is_at_once(clock, answer) -> None:
    guard = Guard()
    calls = busy_then(guard, 100)
    assert_busy(answer(guard))
    assert (len(calls), clock.pauses) == (1, [])
