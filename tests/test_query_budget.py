"""What the guard costs in queries over the bare view, per mode and per vendor.

Measured outside any test transaction (``transaction=True``), as in production:
``BEGIN`` / ``COMMIT`` (and ``SAVEPOINT``s, if any) are counted like other statements.
The bare view runs one INSERT. The numbers are the README's; change both together.
"""

from __future__ import annotations

import pytest
from django.db import connection

from tests import pooler
from tests.conftest import send
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

BARE = 1  # INSERT of the order
# mode -> (first request, replay), over and above nothing: the view's own query included
# in "first", not in "replay" (the view does not run).
#   two-phase first:  INSERT claim | BEGIN, SELECT ... FOR UPDATE, <view>, UPDATE finalize, COMMIT
#   two-phase replay: INSERT claim (ignored), SELECT record
#   single first:     BEGIN, INSERT claim (PG: also sets lock_timeout), <view>, UPDATE, COMMIT
#   single replay:    BEGIN, INSERT claim (ignored), SELECT record, COMMIT
#   atomic=False:     INSERT claim, SELECT session lock (PG, MariaDB), <view>, UPDATE
#                     finalize (which also drops the session lock) | replay: INSERT, SELECT
# Liveness (docs/guarantees.md) costs atomic=False one statement where session locks are
# on, and nothing in the atomic modes, whose row lock was already there. Behind a
# transaction-pooling PgBouncer ("pgbouncer", tests/pooler.py) session locks are off.
BUDGET = {
    "two_phase": {"postgresql": (6, 2), "pgbouncer": (6, 2), "mysql": (6, 2), "sqlite": (6, 2)},
    "single_transaction": {
        "postgresql": (5, 4),
        "pgbouncer": (5, 4),
        "mysql": (5, 4),
        "sqlite": (5, 4),
    },
    "non_atomic": {"postgresql": (4, 2), "pgbouncer": (3, 2), "mysql": (4, 2), "sqlite": (3, 2)},
}
PATHS = {
    "two_phase": "/orders/",
    "single_transaction": "/orders/single/",
    "non_atomic": "/orders/nonatomic/",
}


def test_the_bare_view(client, django_assert_num_queries) -> None:
    for _ in range(2):
        with django_assert_num_queries(BARE):
            assert send(client, "/orders/bare/", {"amount": 1}, key="k1").status_code == 201


@pytest.mark.parametrize("mode", list(BUDGET))
def test_first_request_and_replay(client, django_assert_num_queries, mode: str) -> None:
    first, replay = BUDGET[mode]["pgbouncer" if pooler.TRANSACTION_POOLING else connection.vendor]
    path = PATHS[mode]
    with django_assert_num_queries(first):
        assert send(client, path, {"amount": 1}, key="k1").status_code == 201
    with django_assert_num_queries(replay):
        assert send(client, path, {"amount": 1}, key="k1")["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1  # the replay did not run the view


@pytest.mark.parametrize("mode", list(BUDGET))
def test_unguarded_request_costs_nothing_extra(client, django_assert_num_queries, mode) -> None:
    with django_assert_num_queries(BARE):
        assert send(client, PATHS[mode], {"amount": 1}).status_code == 201


def test_a_rejected_key_costs_no_query(client, django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        assert send(client, "/orders/", {}, key="a, b").status_code == 400
