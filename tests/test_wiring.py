"""The integration matrix: every way of wiring the guard x ATOMIC_REQUESTS x authentication
x mode, on whichever database the suite runs on.

Every cell gets the cheap properties through the test client: the first request runs
once, inside the transactions its wiring promises (whether the ATOMIC_REQUESTS opt-out
reached Django's handler); a replay goes to the same user only and is byte-identical;
another user with the same key gets their own operation; a view that raises, or handles
its own ``IntegrityError``, leaves nothing stored in the transactional modes; the guard
itself never answers 500. A pairwise-covering subset of the cells also gets a 20-way
race on one key, on real connections. Cells that cannot be made safe are refused by
system check E014 instead of being driven.
"""

from __future__ import annotations

import base64
import itertools
import json
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core import checks
from django.db import OperationalError, connection, connections
from django.test import AsyncClient, Client
from django.utils import timezone

from django_idempotency.models import IdempotencyRecord, Status
from tests.concurrency.outcomes import assert_at_most_one_run, assert_conflict, assert_ran_once
from tests.concurrency.threads import Reply, together
from tests.testapp import wiring_views
from tests.testapp.models import Charge, Order
from tests.testapp.wiring_views import (
    CONTROL,
    DRF_WIRINGS,
    HAS_DRF,
    MODES,
    NO_OPT_OUT,
    PLAIN_WIRINGS,
    ViewFailed,
)

THREADS = 20
AUTHS = ("session", "basic", "token")
WIRINGS = PLAIN_WIRINGS + (DRF_WIRINGS if HAS_DRF else ())


@dataclass(frozen=True)
class Cell:
    wiring: str
    mode: str
    atomic_requests: bool
    auth: str

    @property
    def id(self) -> str:
        requests = "atomic_requests" if self.atomic_requests else "no_atomic_requests"
        return f"{self.wiring}-{self.mode}-{requests}-{self.auth}"

    @property
    def route(self) -> str:
        return wiring_views.route(self.wiring, self.mode)

    @property
    def path(self) -> str:
        return "/" + self.route

    @property
    def refused(self) -> bool:
        """atomic=False inside the request's transaction: E014 refuses it at start-up."""
        return self.mode == "non-atomic" and self.in_request_transaction

    @property
    def in_request_transaction(self) -> bool:
        """Whether Django's handler wraps the view: the opt-out cannot reach it."""
        return self.atomic_requests and self.wiring in NO_OPT_OUT

    @property
    def single_transaction(self) -> bool:
        """Whether duplicates wait on the first instead of getting 409 in progress: the
        view asked for it, or the request's transaction forces it."""
        return self.mode == "single" or (self.mode == "two-phase" and self.in_request_transaction)

    @property
    def depth(self) -> int:
        """The atomic blocks the view runs inside: none for atomic=False, else the
        guard's, inside the request's where the opt-out cannot reach the handler."""
        if self.mode == "non-atomic":
            return 0
        return 2 if self.in_request_transaction else 1


def auths_of(wiring: str) -> tuple[str, ...]:
    """Plain Django views only know session users: Basic and Token credentials are DRF's,
    so a plain view would see an anonymous user (not applicable)."""
    return AUTHS if wiring in DRF_WIRINGS else ("session",)


ALL_CELLS = [
    Cell(wiring, mode, atomic_requests, auth)
    for wiring in WIRINGS
    for mode in MODES
    for atomic_requests in (False, True)
    for auth in auths_of(wiring)
]
CELLS = [cell for cell in ALL_CELLS if not cell.refused]
REFUSED = [cell for cell in ALL_CELLS if cell.refused]


def pairs_of(cell: Cell) -> set[tuple[tuple[int, Any], tuple[int, Any]]]:
    values = list(enumerate((cell.wiring, cell.mode, cell.atomic_requests, cell.auth)))
    return set(itertools.combinations(values, 2))


def must_race(cell: Cell) -> bool:
    """Every wiring races once in the default mode under ATOMIC_REQUESTS: where the
    guard's opt-out reaches the URL and where the request's transaction forces it in."""
    return cell.mode == "two-phase" and cell.atomic_requests and cell.auth == "session"


def pairwise_covering(cells: list[Cell]) -> list[Cell]:
    """The race's subset: the ``must_race`` cells, then every pair of values of any two
    dimensions (wiring, mode, ATOMIC_REQUESTS, authentication) that some cell has.

    One race per (wiring, mode) at least: those pairs alone need that many. For each
    (wiring, mode) no seed has, greedily the cell that covers the most pairs not yet
    covered (ties: the first in ``cells``); then any cell for a pair still left out.
    The database is the fifth dimension: every run races on its own database.
    """
    wanted = set().union(*(pairs_of(cell) for cell in cells))
    chosen = [cell for cell in cells if must_race(cell)]
    for cell in chosen:
        wanted -= pairs_of(cell)
    for wiring, mode in itertools.product(WIRINGS, MODES):
        if any((cell.wiring, cell.mode) == (wiring, mode) for cell in chosen):
            continue
        options = [cell for cell in cells if (cell.wiring, cell.mode) == (wiring, mode)]
        best = max(options, key=lambda cell: len(pairs_of(cell) & wanted))
        wanted -= pairs_of(best)
        chosen.append(best)
    for cell in cells:
        if pairs_of(cell) & wanted:
            wanted -= pairs_of(cell)
            chosen.append(cell)
    return chosen


RACES = pairwise_covering(CELLS)


def ids(cells: list[Cell]) -> list[str]:
    return [cell.id for cell in cells]


def in_database(cells: list[Cell], commits: Callable[[Cell], bool]) -> list[Any]:
    """The cells as parameters, each in the test case's transaction (cheap) unless
    ``commits(cell)``: then on a real connection in autocommit, flushed afterwards."""
    return [
        pytest.param(cell, id=cell.id, marks=pytest.mark.django_db(transaction=commits(cell)))
        for cell in cells
    ]


@pytest.fixture(autouse=True)
def reset_control() -> Iterator[None]:
    CONTROL.update(fail=None, depth=None)
    yield
    CONTROL.update(fail=None, depth=None)


@pytest.fixture
def cell(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Cell:
    """The cell, with ATOMIC_REQUESTS switched where Django's handler reads it."""
    value: Cell = request.param
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", value.atomic_requests)
    return value


Caller = Callable[..., Any]


def caller(cell: Cell, user: User) -> Caller:
    """``call(key)`` POSTs ``{"reference": key}`` as ``user`` with ``cell``'s authentication.

    It raises what the server raised: a 500 that is not the view's own ``ViewFailed``
    is the guard's, and fails the test with its traceback.
    """
    headers: dict[str, str] = {}
    if cell.auth == "basic":
        password = f"{user.username}-pw"
        encoded = base64.b64encode(f"{user.username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {encoded}"
    elif cell.auth == "token":
        from rest_framework.authtoken.models import Token

        headers["Authorization"] = f"Token {Token.objects.get_or_create(user=user)[0].key}"
    client: Client | AsyncClient
    client = AsyncClient(headers=headers) if cell.wiring == "async" else Client(headers=headers)
    if cell.auth == "session":
        client.force_login(user)
    post = async_to_sync(client.post) if isinstance(client, AsyncClient) else client.post

    def call(key: str, path: str | None = None) -> Any:
        response = post(
            path or cell.path,
            data=json.dumps({"reference": key}),
            content_type="application/json",
            headers={"Idempotency-Key": key},
        )
        assert response.status_code != 500, response
        return response

    return call


def new_key(cell: Cell) -> str:
    return f"{cell.wiring}-{uuid.uuid4()}"


def owners(key: str) -> list[str]:
    return sorted(Order.objects.filter(reference=key).values_list("owner", flat=True))


def assert_replay_of(replay: Any, first: Any) -> None:
    """Byte-identical to ``first``: status, body and every header its record stored."""
    assert replay["Idempotent-Replayed"] == "true", replay
    assert replay.status_code == first.status_code
    assert replay.content == first.content
    [record] = [
        record
        for record in IdempotencyRecord.objects.filter(response_status=first.status_code)
        if bytes(record.response_body or b"") == first.content
    ]
    assert "Content-Type" in record.response_headers
    for name in record.response_headers:
        assert replay[name] == first[name], name


def assert_first_run(response: Any, owner: str) -> None:
    assert response.status_code == 201, response.content
    assert "Idempotent-Replayed" not in response
    assert response.json()["owner"] == owner


def records(key: str) -> list[IdempotencyRecord]:
    return list(IdempotencyRecord.objects.filter(key=key))


# The switch itself: ATOMIC_REQUESTS really makes Django's handler wrap the view.


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("on", [False, True], ids=["no_atomic_requests", "atomic_requests"])
def test_the_atomic_requests_switch_reaches_the_handler(
    on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", on)
    assert connection.settings_dict is connections.settings["default"]
    assert Client().get("/wiring/probe/").json() == {"in_atomic_block": on}


def test_the_matrix_is_whole() -> None:
    wirings = len(PLAIN_WIRINGS) + len(DRF_WIRINGS) * len(AUTHS) if HAS_DRF else len(WIRINGS)
    assert len(ALL_CELLS) == wirings * len(MODES) * 2
    assert len(REFUSED) == (4 if HAS_DRF else 1)


def test_the_races_cover_every_pair_of_values() -> None:
    wanted = set().union(*(pairs_of(cell) for cell in CELLS))
    covered = set().union(*(pairs_of(cell) for cell in RACES))
    assert wanted <= covered
    assert {(cell.wiring, cell.mode) for cell in RACES} == set(itertools.product(WIRINGS, MODES))
    assert {cell.wiring for cell in RACES if must_race(cell)} == set(WIRINGS)


# The cheap properties, in every cell.


@pytest.mark.parametrize("cell", in_database(CELLS, lambda _cell: False), indirect=True)
def test_a_replay_goes_to_the_same_user_only(cell: Cell, alice: User, bob: User) -> None:
    as_alice, as_bob = caller(cell, alice), caller(cell, bob)
    key = new_key(cell)

    first = as_alice(key)
    assert_first_run(first, "alice")
    assert owners(key) == ["alice"]
    assert CONTROL["depth"] == cell.depth

    assert_replay_of(as_alice(key), first)
    assert owners(key) == ["alice"]

    theirs = as_bob(key)
    assert_first_run(theirs, "bob")
    assert owners(key) == ["alice", "bob"]
    assert_replay_of(as_bob(key), theirs)
    assert_replay_of(as_alice(key), first)
    assert owners(key) == ["alice", "bob"]
    assert [record.status for record in records(key)] == [Status.COMPLETED] * 2


@pytest.mark.parametrize("cell", in_database(CELLS, lambda _cell: False), indirect=True)
def test_a_view_error_leaves_no_record_and_the_retry_runs(cell: Cell, alice: User) -> None:
    as_alice = caller(cell, alice)
    key = new_key(cell)

    CONTROL["fail"] = "raise"
    with pytest.raises(ViewFailed):
        as_alice(key)
    if cell.mode == "non-atomic":
        # Its write committed on its own; the record stays, its lease ended at once.
        assert owners(key) == ["alice"]
        [kept] = records(key)
        assert kept.status == Status.IN_PROGRESS
        assert not kept.lease_is_live(timezone.now())
    else:
        assert owners(key) == []
        assert records(key) == []

    CONTROL["fail"] = None
    retry = as_alice(key)
    assert_first_run(retry, "alice")
    assert owners(key) == ["alice"] * (2 if cell.mode == "non-atomic" else 1)
    [record] = records(key)
    assert record.status == Status.COMPLETED
    if cell.mode == "non-atomic":
        assert (record.pk, record.attempts) == (kept.pk, 2)  # taken over, not replaced
    assert_replay_of(as_alice(key), retry)


def autocommits(cell: Cell) -> bool:
    """An atomic=False view runs in autocommit: inside the test case's transaction its
    caught IntegrityError would mark that transaction for rollback, as no server would."""
    return cell.mode == "non-atomic"


@pytest.mark.parametrize("cell", in_database(CELLS, autocommits), indirect=True)
def test_a_view_handled_integrity_error_is_the_views_answer(cell: Cell, alice: User) -> None:
    as_alice = caller(cell, alice)
    key = new_key(cell)

    CONTROL["fail"] = "integrity"
    handled = as_alice(key)
    assert handled.status_code == 409, handled.content
    assert handled.json() == {"error": "duplicate charge"}
    assert "Idempotent-Replayed" not in handled

    CONTROL["fail"] = None
    retry = as_alice(key)
    if cell.mode == "non-atomic":
        # Autocommit: nothing was marked for rollback; a 4xx is stored and replayed.
        assert owners(key) == ["alice"]
        assert Charge.objects.count() == 1
        assert_replay_of(retry, handled)
        assert owners(key) == ["alice"]
    else:
        assert Charge.objects.count() == 0
        assert_first_run(retry, "alice")
        assert owners(key) == ["alice"]
    [record] = records(key)
    assert record.status == Status.COMPLETED


# What cannot be made safe is refused at start-up, by name.


def e014_messages() -> list[checks.CheckMessage]:
    return [message for message in checks.run_checks() if message.id == "django_idempotency.E014"]


def names_route(message: checks.CheckMessage, cell: Cell) -> bool:
    return cell.route in message.msg or f"wiring-{cell.wiring}-{cell.mode}" in message.msg


@pytest.mark.parametrize("cell", REFUSED, ids=ids(REFUSED), indirect=True)
def test_a_cell_that_cannot_be_made_safe_is_refused_by_the_system_check(cell: Cell) -> None:
    [message] = [message for message in e014_messages() if names_route(message, cell)]
    assert message.level >= checks.ERROR
    assert message.hint and "non_atomic_requests" in message.hint


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("wiring", sorted(NO_OPT_OUT & set(WIRINGS)))
def test_the_remedy_in_the_hint_clears_the_refusal(
    wiring: str, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``transaction.non_atomic_requests`` on the URL's view: no E014, and the
    atomic=False view runs as everywhere else, its failure kept for the retry."""
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    route = wiring_views.opted_out_route(wiring)
    assert not [message for message in e014_messages() if route in message.msg]
    cell = Cell(wiring, "non-atomic", atomic_requests=True, auth="session")
    call = caller(cell, alice)
    key = new_key(cell)
    path = "/" + route
    CONTROL["fail"] = "raise"
    with pytest.raises(ViewFailed):
        call(key, path)
    [kept] = records(key)
    assert not kept.lease_is_live(timezone.now())
    CONTROL["fail"] = None
    first = call(key, path)
    assert_first_run(first, "alice")
    assert_replay_of(call(key, path), first)
    assert owners(key) == ["alice", "alice"]


@pytest.mark.parametrize("on", [False, True], ids=["no_atomic_requests", "atomic_requests"])
def test_the_system_check_refuses_nothing_else(on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", on)
    refused = {cell.route for cell in REFUSED if cell.atomic_requests == on}
    messages = e014_messages()
    named = {cell.route for cell in ALL_CELLS for message in messages if names_route(message, cell)}
    assert named == refused


# The race, on the pairwise-covering subset.


def reply_of(response: Any) -> Reply:
    return Reply.of(response)


def failed_to_read_the_user(result: Any) -> bool:
    """In-memory SQLite's shared cache refuses a read at once while another connection
    writes ("database table is locked"; no timeout applies). Every cell reads its user
    (session, token or password) outside the guard's statements: such a refusal is
    SQLite's and the authentication's, not the guard's; the servers never do it."""
    if not (isinstance(result, OperationalError) and "table is locked" in str(result)):
        return False
    frames = traceback.extract_tb(result.__traceback__)
    return any(
        "/django/contrib/auth/" in frame.filename
        or "/rest_framework/authentication" in frame.filename
        for frame in frames
    )


def assert_never_twice_on_sqlite(results: list[Any], key: str, retry: Callable[[], Reply]) -> None:
    """``outcomes.assert_never_twice`` where some requests never reached the guard: the
    view ran at most once, nothing else failed, and a retry then answers its outcome."""
    answered = [result for result in results if not failed_to_read_the_user(result)]
    executed = assert_at_most_one_run(answered)
    assert Order.objects.filter(reference=key).count() <= 1
    final = retry()
    assert final.status == 201, final
    if executed:
        assert (final.body, final.replayed) == (executed[0].body, True)
    assert Order.objects.filter(reference=key).count() == 1


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cell", RACES, ids=ids(RACES), indirect=True)
def test_a_race_on_one_key_runs_the_view_once(cell: Cell, alice: User) -> None:
    vendor = connection.vendor
    if vendor == "sqlite" and cell.mode == "non-atomic":
        pytest.skip(
            "in-memory SQLite (shared cache) fails a lock wait at once, even the claimer's "
            "finalize: the retry then redoes an atomic=False view, as that mode allows"
        )
    if vendor == "sqlite" and cell.in_request_transaction:
        pytest.skip(
            "in-memory SQLite (shared cache) fails Django's own ATOMIC_REQUESTS BEGIN at once "
            "('database table is locked') when another request holds the lock, before the "
            "guard runs: there is nothing for the guard to answer"
        )
    callers = [caller(cell, alice) for _ in range(THREADS)]
    key = new_key(cell)
    results = together(THREADS, lambda index: reply_of(callers[index](key)))
    if vendor == "sqlite":
        assert_never_twice_on_sqlite(results, key, retry=lambda: reply_of(caller(cell, alice)(key)))
        return
    first = assert_ran_once(results, key)
    assert json.loads(first.body)["owner"] == "alice"
    conflicts = [reply for reply in results if reply.status == 409]
    for reply in conflicts:
        if cell.single_transaction:
            # Duplicates wait and replay; MariaDB may refuse one with a deadlock instead.
            assert_conflict(reply, "idempotency-lock-conflict")
        else:
            assert_conflict(reply)
            kind = reply.problem["type"]
            assert kind.endswith(("idempotency-request-in-progress", "idempotency-lock-conflict"))
    if cell.single_transaction and vendor == "postgresql":
        assert conflicts == []
