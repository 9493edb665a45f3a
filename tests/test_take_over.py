"""Take-over: a record left IN_PROGRESS whose lease has ended (its worker died or
stalled) is continued by the next retry, as the same operation with the next attempt
number and a new lease token, never replaced by a new one.

The threaded races of a take-over (one winner among many retries, NOWAIT on a
row-locked record, a crashed external call resumed) are in
tests/concurrency/test_take_over.py; the fencing of the attempt that lost its lease, in
tests/concurrency/test_fencing.py. Elsewhere, take-over as one input of another
module's behaviour: its signal (tests/test_signals.py), purge re-checking a record a
retry took over (tests/test_purge.py), the async view (tests/test_async.py), the
writer database (tests/test_routing.py), ``once()`` (tests/test_once.py) and the
wiring matrix (tests/test_wiring.py).
"""

from __future__ import annotations

import pytest

from django_idempotency.models import IdempotencyRecord, Status
from django_idempotency.operation import Executed
from tests.engine_work import MODES, Work, run
from tests.factories import IdempotencyRecordFactory, request_fingerprint
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db


# Through ``@idempotent``.


def test_a_dead_lease_is_taken_over_by_the_retry(post) -> None:
    stuck = IdempotencyRecordFactory(stuck=True, key="k1", fingerprint=request_fingerprint(data={}))
    response = post("/orders/", {}, key="k1")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    record = IdempotencyRecord.objects.get()
    assert record.pk == stuck.pk  # the same operation
    assert record.attempts == 2
    assert record.lease_token != stuck.lease_token
    assert record.status == Status.COMPLETED
    assert Order.objects.count() == 1


# ``engine.execute``, in every mode.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", MODES)
def test_dead_lease_is_taken_over(mode) -> None:
    stuck = IdempotencyRecordFactory(
        stuck=True, scope="s", key="k1", fingerprint="f" * 64, recovery_point="charged"
    )
    work = Work()
    outcome = run(work, mode)
    assert isinstance(outcome, Executed)
    operation = work.operations[0]
    assert operation.id == stuck.pk
    assert operation.attempt == 2
    assert operation.recovery_point == "charged"
    record = IdempotencyRecord.objects.get()
    assert (record.pk, record.attempts, record.status) == (stuck.pk, 2, Status.COMPLETED)
    assert record.lease_token != stuck.lease_token
