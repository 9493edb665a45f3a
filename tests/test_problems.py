"""The problem+json answers (RFC 9457) of django_idempotency.problems: one type each,
every member present, never cached."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from django_idempotency import responses

pytestmark = pytest.mark.django_db


def test_every_problem_has_its_own_type() -> None:
    from django_idempotency import problems as module

    problems = [value for value in vars(module).values() if isinstance(value, module.Problem)]
    assert len(problems) >= 8
    assert len({problem.slug for problem in problems}) == len(problems)


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: responses.missing_key(), 400),
        (lambda: responses.invalid_key("Bad."), 400),
        (lambda: responses.busy("lock", 1), 409),
        (lambda: responses.busy("lease_lost", 1), 409),
        (lambda: responses.unavailable(), 503),
    ],
)
def test_problem_responses_are_complete(make, status) -> None:
    response = make()
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    body = json.loads(response.content)
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status


def test_conflict_problems_carry_retry_after() -> None:
    assert responses.busy("lock", 3)["Retry-After"] == "3"
    assert responses.busy("lease_lost", 1)["Retry-After"] == "1"
    lock = json.loads(responses.busy("lock", 1).content)
    lost = json.loads(responses.busy("lease_lost", 1).content)
    assert lock["type"] != lost["type"]


@override_settings(IDEMPOTENCY={"PROBLEM_BASE_URL": "https://example.com/problems/"})
def test_problem_base_url_setting(post) -> None:
    response = post("/orders/required/", {})
    assert response.json()["type"] == "https://example.com/problems/idempotency-key-missing"
