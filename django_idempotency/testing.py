"""A test kit for your own guarded views: the package's promises, checked on your endpoint.

The guarantees hold only where a view is wired as the docs say (the guard on the URL's
callback, keys scoped per user, the side effect inside the guarded work), so these checks
send the requests a retrying client would send, against your real view and your real
database, and count your side effect with a callable you pass. Each check uses fresh
UUID keys and raises :class:`IdempotencyCheckFailed` (an ``AssertionError``) naming what
broke. It works from pytest (the fixtures of ``django_idempotency.pytest_plugin``) and
from Django's ``TestCase`` / ``TransactionTestCase``; the race needs committed data, so
only the latter or ``django_db(transaction=True)``.

Nothing here imports Django's models or the package's engine at import time: pytest
loads the plugin that imports this module before any settings are configured.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock
from urllib.parse import urlencode

__all__ = [
    "IdempotencyCheckFailed",
    "IdempotencyChecks",
    "Race",
    "Reply",
    "Report",
    "check_idempotent",
    "failing",
]

_REPLAYED = "Idempotent-Replayed"
_PROBLEM = "application/problem+json"
_JOIN_TIMEOUT = 60.0
_SQLITE_NOTE = (
    "SQLite has one writer for the whole database, and an in-memory test database fails "
    "a lock wait at once: this race proves no duplicate ran twice, not how PostgreSQL or "
    "MariaDB row locks behave; run it there too."
)


class IdempotencyCheckFailed(AssertionError):
    """A check found the endpoint breaking a promise; ``check`` names which one."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


@dataclass(frozen=True)
class Reply:
    """One answer as the client saw it, kept for the report and the failure messages.

    ``error`` is the exception the test client re-raised for a failing attempt (then
    ``status`` is 500 and there is no body).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    error: BaseException | None = None
    drf_error: bool = False

    def header(self, name: str) -> str | None:
        """The value of header ``name``, whatever its case."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def replayed(self) -> bool:
        """Whether the package answered from the stored response."""
        return self.header(_REPLAYED) == "true"

    @property
    def problem_type(self) -> str:
        """The ``type`` of a problem+json answer, else ``""``."""
        if (self.header("Content-Type") or "").split(";")[0] != _PROBLEM:
            return ""
        try:
            data = json.loads(self.body)
        except ValueError:
            return ""
        return str(data.get("type", "")) if isinstance(data, dict) else ""

    @property
    def failed(self) -> bool:
        """An attempt the package does not store: raised, a 5xx, or a DRF error response."""
        return self.error is not None or self.status >= 500 or self.drf_error

    def __str__(self) -> str:
        if self.error is not None:
            return f"raised {self.error!r}"
        shown = self.body[:300].decode("utf-8", "replace")
        more = "..." if len(self.body) > 300 else ""
        replayed = ", Idempotent-Replayed: true" if self.replayed else ""
        return f"{self.status} ({self.header('Content-Type')}{replayed}) {shown}{more}"


def _package_problem(reply: Reply, slug: str = "") -> bool:
    kind = reply.problem_type.rpartition("#")[2] or reply.problem_type.rpartition("/")[2]
    return kind.startswith("idempotency-") and kind.endswith(slug)


@dataclass(frozen=True)
class Race:
    """What ``threads`` concurrent duplicates of one key got, and the retry after them."""

    replies: tuple[Reply, ...]
    follow_up: Reply
    ran: int
    conflicts: int
    replays: int
    note: str = ""


@dataclass
class Report:
    """What the checks sent and got; ``passed`` lists the checks that ran and held."""

    first: Reply | None = None
    replay: Reply | None = None
    reused: Reply | None = None
    other_user: Reply | None = None
    failed_attempt: Reply | None = None
    retry: Reply | None = None
    race: Race | None = None
    passed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"passed: {', '.join(self.passed) or 'nothing'}"]
        if self.race is not None:
            race = self.race
            lines.append(
                f"race: {len(race.replies)} threads, {race.ran} ran, {race.conflicts} got 409, "
                f"{race.replays} replayed"
            )
            if race.note:
                lines.append(race.note)
        return "\n".join(lines)


def failing(
    target: str, exception: BaseException | None = None
) -> AbstractContextManager[mock.MagicMock]:
    """Patch ``target`` (a dotted path, as for ``unittest.mock.patch``) to raise while the
    context is open: ``fail=failing("shop.views.send_receipt")`` makes the attempt fail
    where your view calls that function."""
    error = exception or RuntimeError(f"{target} failed (django_idempotency.testing.failing)")
    return mock.patch(target, side_effect=error)


_Client = Any
_Fail = AbstractContextManager[Any] | Callable[[], AbstractContextManager[Any]]


class IdempotencyChecks:
    """The checks for one endpoint: one method per promise, each with fresh keys.

    :param client: a Django test ``Client`` or DRF ``APIClient``, logged in as needed, or a
        callable returning a new one (the race calls it once per thread; a client given
        as it is gets copied per thread, cookies and credentials included).
    :param method: the HTTP method, ``"post"``, ``"put"``, ...
    :param path: the URL path, with its query string if any; or a callable of the key that
        returns it (called once per key), for views that act once per resource, such as
        paying an order: ``lambda key: f"/orders/{new_order().pk}/pay/"``.
    :param data: the body: a ``dict`` or ``list`` goes as JSON (or form-encoded, with that
        ``content_type``), ``str`` or ``bytes`` as they are; or a callable of the key that
        returns it (called once per key), for views that refuse the same payload twice.
    :param side_effects: a callable counting what the view does, such as
        ``Order.objects.count``: a first run must raise it, a replay must not, and a
        race or a failure and its retry must raise it by exactly one run's worth.
    :param other_data: for :meth:`key_reuse`; by default ``data`` with one more field
        (a ``dict``), else the same body with one more query parameter.
    :param status: the first run's status; by default any 2xx.
    :param headers: more request headers, ``{"Authorization": "Token ..."}``.
    :param ignore_headers: response headers a replay may change, such as a request id a
        middleware adds to every response.
    """

    def __init__(
        self,
        client: _Client,
        method: str,
        path: str | Callable[[str], str],
        data: Any = None,
        *,
        side_effects: Callable[[], int] | None = None,
        other_data: Any = None,
        status: int | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        ignore_headers: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.method = method.upper()
        self.path = path
        self.data = data
        self.side_effects = side_effects
        self.other_data = other_data
        self.status = status
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.ignore_headers = {name.lower() for name in ignore_headers}
        self.report = Report()
        self._main_client = self._new_client()
        self._completed: tuple[str, Reply] | None = None
        self._requests: dict[str, tuple[str, Any]] = {}
        self._run_size: int | None = None

    # Requests.

    def _new_client(self) -> _Client:
        if callable(self.client) and not hasattr(self.client, "generic"):
            return self.client()
        return self.client

    def _thread_client(self) -> _Client:
        if callable(self.client) and not hasattr(self.client, "generic"):
            return self.client()
        clone = copy.copy(self.client)
        clone.cookies = copy.deepcopy(self.client.cookies)
        if hasattr(self.client, "handler"):
            clone.handler = copy.copy(self.client.handler)
        return clone

    def _prepare(self, fresh: str) -> tuple[str, Any]:
        """The path and payload for the key ``fresh`` (one this kit made up), made once:
        a retry must send the same."""
        if fresh not in self._requests:
            path = self.path(fresh) if callable(self.path) else self.path
            data = self.data(fresh) if callable(self.data) else self.data
            self._requests[fresh] = (path, data)
        return self._requests[fresh]

    def _encode(self, data: Any) -> str | bytes:
        if data is None:
            return b""
        if isinstance(data, (str, bytes)):
            return data
        if self.content_type.startswith("application/x-www-form-urlencoded"):
            return urlencode(data, doseq=True)
        return json.dumps(data)

    def send(
        self,
        key: str | None,
        *,
        data: Any = None,
        path: str | None = None,
        client: _Client = None,
        catch: bool = False,
    ) -> Reply:
        """Send the request with ``Idempotency-Key: key`` (``data`` defaults to the
        check's payload for that key) and return what came back; ``catch``: an
        exception the client re-raises becomes a failed :class:`Reply`."""
        from django_idempotency.conf import conf

        extra = {"HTTP_" + name.upper().replace("-", "_"): v for name, v in self.headers.items()}
        if key is not None:
            extra[conf.header_meta_key] = key
        default_path, default_data = self._prepare(key or "")
        body = self._encode(default_data if data is None else data)
        sender = client if client is not None else self._main_client
        try:
            response = sender.generic(
                self.method, path or default_path, body, self.content_type, False, **extra
            )
        except Exception as error:
            if not catch:
                raise
            return Reply(status=500, headers={}, body=b"", error=error)
        if getattr(response, "streaming", False):
            content = b"".join(bytes(chunk) for chunk in response.streaming_content)
        else:
            content = bytes(response.content)
        return Reply(
            status=response.status_code,
            headers=dict(response.items()),
            body=content,
            drf_error=bool(getattr(response, "exception", False)),
        )

    # Helpers for the checks.

    def _count(self) -> int | None:
        return None if self.side_effects is None else self.side_effects()

    def _fail(self, check: str, message: str, *replies: tuple[str, Reply]) -> None:
        shown = self.path if isinstance(self.path, str) else "(path from a callable)"
        lines = [message, f"  request: {self.method} {shown}"]
        lines += [f"  {label}: {reply}" for label, reply in replies]
        raise IdempotencyCheckFailed(check, "\n".join(lines))

    def _expect_success(self, check: str, label: str, reply: Reply) -> None:
        if reply.error is not None:
            raise IdempotencyCheckFailed(
                check, f"the {label} raised {reply.error!r}"
            ) from reply.error
        if self.status is not None:
            fine = reply.status == self.status
            wanted = str(self.status)
        else:
            fine = 200 <= reply.status < 300
            wanted = "a 2xx"
        if not fine:
            hint = ""
            if _package_problem(reply):
                hint = " (the package's own answer: see the problem type)"
            self._fail(
                check, f"the {label} answered {reply.status}, not {wanted}{hint}", (label, reply)
            )

    def _expect_same(self, check: str, first: Reply, again: Reply, label: str) -> None:
        if not again.replayed:
            self._fail(
                check,
                f"the {label} with the same key and payload was not a replay (no "
                f"{_REPLAYED}: true): is the view guarded (@idempotent on the URL's view, "
                "IdempotentMixin on a DRF view) for this method, and does the key reach it?",
                ("first", first),
                (label, again),
            )
        if (again.status, again.body) != (first.status, first.body):
            self._fail(
                check,
                f"the {label} differs from the first answer in its status or body",
                ("first", first),
                (label, again),
            )
        stored = _stored_headers(first.headers)
        for name, value in stored.items():
            if name.lower() in self.ignore_headers:
                continue
            if again.header(name) != value:
                self._fail(
                    check,
                    f"the {label} has {name}: {again.header(name)!r}, the first answer "
                    f"{value!r}; a header a middleware sets anew on every response belongs "
                    "in ignore_headers=",
                    ("first", first),
                    (label, again),
                )

    def _expect_unchanged(self, check: str, before: int | None, what: str) -> None:
        after = self._count()
        if before is not None and after != before:
            raise IdempotencyCheckFailed(
                check, f"{what} changed side_effects from {before} to {after}"
            )

    def _expect_one_run(self, check: str, before: int | None, what: str) -> None:
        after = self._count()
        if before is None or after is None:
            return
        if after - before != self._run_size:
            raise IdempotencyCheckFailed(
                check,
                f"{what} changed side_effects by {after - before} (from {before} to "
                f"{after}); one run changes it by {self._run_size}",
            )

    def _ensure_completed(self) -> tuple[str, Reply]:
        if self._completed is None:
            self.replay()
        assert self._completed is not None
        return self._completed

    # The checks.

    def replay(self) -> Reply:
        """The first request with a new key runs the view; the same request again gets the
        stored answer: ``Idempotent-Replayed: true``, the same status, body and stored
        headers, and no new side effect. Returns the replay."""
        check = "replay"
        key = str(uuid.uuid4())
        self._prepare(key)
        before = self._count()
        first = self.send(key)
        self._expect_success(check, "first request", first)
        if first.replayed:
            self._fail(check, f"a new key's first answer carries {_REPLAYED}", ("first", first))
        after = self._count()
        if before is not None and after is not None:
            if after <= before:
                self._fail(
                    check,
                    f"the first run left side_effects at {after} (it was {before}): does it "
                    "count what this view does, on the database the view writes to?",
                    ("first", first),
                )
            self._run_size = after - before
        again = self.send(key)
        self._expect_same(check, first, again, "replay")
        self._expect_unchanged(check, after, "the replay")
        self._completed = (key, first)
        self.report.first, self.report.replay = first, again
        self.report.passed.append(check)
        return again

    def key_reuse(self) -> Reply:
        """The completed key with another payload gets ``422 idempotency-key-reused``, runs
        nothing, and the key still replays its first answer. Returns the 422."""
        check = "key_reuse"
        key, first = self._ensure_completed()
        path, payload = self._prepare(key)
        data = self.other_data
        if data is None:
            if isinstance(payload, dict):
                data = {**payload, "idempotency_check": uuid.uuid4().hex}
            else:
                path = f"{path}{'&' if '?' in path else '?'}idempotency-check={uuid.uuid4().hex}"
        before = self._count()
        reused = self.send(key, data=data, path=path)
        if reused.status != 422 or not _package_problem(reused, "idempotency-key-reused"):
            self._fail(
                check,
                "the same key with another payload was not answered 422 "
                "idempotency-key-reused: does a custom fingerprint= leave out what changed? "
                "Pass other_data= that it sees",
                ("first", first),
                ("other payload", reused),
            )
        self._expect_unchanged(check, before, "the reused key")
        self._expect_same(check, first, self.send(key), "replay after the reuse")
        self.report.reused = reused
        self.report.passed.append(check)
        return reused

    def other_user(self, client: _Client) -> Reply:
        """Another user's request with the same key never gets the first user's stored
        answer: it runs anew or gets an answer of its own, which it alone replays.

        :param client: a client logged in as another user, or a callable returning one.
        """
        check = "other_user"
        key, first = self._ensure_completed()
        theirs_client = client() if callable(client) and not hasattr(client, "generic") else client
        before = self._count()
        theirs = self.send(key, client=theirs_client, catch=True)
        if theirs.replayed:
            self._fail(
                check,
                "another user's request with the same key got the first user's stored "
                "answer: keys are not scoped per user. Check SCOPE or scope=, and that the "
                "user is authenticated before the guard reads it (DRF: IdempotentMixin, or "
                "@idempotent above @api_view)",
                ("first user", first),
                ("other user", theirs),
            )
        if _package_problem(theirs):
            self._fail(
                check,
                "another user's request with the same key was refused as if the key were "
                "theirs: both users share one scope",
                ("first user", first),
                ("other user", theirs),
            )
        if theirs.failed:
            self._fail(check, "another user's request failed", ("other user", theirs))
        after = self._count()
        ran = None if before is None or after is None else after - before
        if theirs.body == first.body and theirs.status < 300 and not ran:
            self._fail(
                check,
                "another user's answer is byte for byte the first user's, and "
                + (
                    "side_effects shows no new run: a leaked replay without its header?"
                    if ran is not None
                    else "without side_effects= the kit cannot tell a new run from a leak"
                ),
                ("first user", first),
                ("other user", theirs),
            )
        if ran is not None and self._run_size is not None and ran > self._run_size:
            self._fail(check, f"another user's request changed side_effects by {ran}")
        again = self.send(key, client=theirs_client)
        if (again.status, again.body) != (theirs.status, theirs.body):
            self._fail(
                check,
                "the other user's retry did not get their own first answer",
                ("other user", theirs),
                ("their retry", again),
            )
        self._expect_same(check, first, self.send(key), "first user's replay after the other's")
        self.report.other_user = theirs
        self.report.passed.append(check)
        return theirs

    def failure(self, fail: _Fail) -> Reply:
        """An attempt that fails (the view raises or answers 5xx while ``fail`` is open)
        stores nothing: the retry runs the view again, and the failure and the retry
        together do one run's worth of side effects. Returns the retry.

        :param fail: a context manager under which the view fails, or a callable
            returning one, such as ``failing("shop.views.send_receipt")``.
        """
        check = "failure"
        self._ensure_completed()
        key = str(uuid.uuid4())
        self._prepare(key)
        before = self._count()
        manager = fail if isinstance(fail, AbstractContextManager) else fail()
        with manager:
            failed = self.send(key, catch=True)
        if not failed.failed:
            self._fail(
                check,
                "the request under fail= did not fail: fail= must make the view raise or "
                "answer 5xx, or the check cannot tell whether the retry runs again",
                ("under fail=", failed),
            )
        if failed.replayed:
            self._fail(check, "a failing attempt was answered as a replay", ("failed", failed))
        retry = self.send(key, catch=True)
        if retry.replayed:
            self._fail(
                check,
                "the retry after a failed attempt got a stored answer: a failure must not be "
                "stored",
                ("failed", failed),
                ("retry", retry),
            )
        self._expect_success(check, "retry after the failure", retry)
        self._expect_one_run(
            check,
            before,
            "the failed attempt and its retry (a failure's side effect must roll back, or "
            "be idempotent itself with atomic=False: derived_key())",
        )
        self._expect_same(check, retry, self.send(key), "replay of the retry")
        self.report.failed_attempt, self.report.retry = failed, retry
        self.report.passed.append(check)
        return retry

    def race(self, threads: int = 8) -> Race:
        """``threads`` duplicates of one new key, sent at the same instant from real threads
        with their own database connections, and one retry after them: the view runs
        once, every other duplicate gets the stored answer or a ``409`` with
        ``Retry-After``, and side effects go up by one run.

        Needs committed data (``TransactionTestCase``, ``django_db(transaction=True)``):
        inside a test's transaction the threads could not see its rows.
        """
        from django.db import connections

        check = "race"
        if threads < 2:
            raise ValueError("a race needs at least 2 threads")
        if any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
            raise RuntimeError(
                f"race={threads} cannot run inside a transaction (a TestCase, or pytest's "
                "django_db without transaction=True): the threads use their own database "
                "connections and would not see this test's uncommitted rows. Use "
                "TransactionTestCase or @pytest.mark.django_db(transaction=True) for the "
                "race, or leave it out here."
            )
        self._ensure_completed()
        key = str(uuid.uuid4())
        self._prepare(key)
        clients = [self._thread_client() for _ in range(threads)]
        results: list[Reply | BaseException | None] = [None] * threads
        barrier = threading.Barrier(threads)

        def run(index: int) -> None:
            try:
                barrier.wait(_JOIN_TIMEOUT)
                results[index] = self.send(key, client=clients[index], catch=True)
            except BaseException as error:
                results[index] = error
            finally:
                _close_thread_connections()

        before = self._count()
        workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(_JOIN_TIMEOUT)
            if worker.is_alive():
                raise IdempotencyCheckFailed(check, f"a thread still ran after {_JOIN_TIMEOUT}s")
        replies: list[Reply] = []
        for outcome in results:
            if not isinstance(outcome, Reply):
                raise IdempotencyCheckFailed(check, f"a thread failed: {outcome!r}")
            replies.append(outcome)
        runs = [r for r in replies if not r.replayed and not _package_problem(r)]
        conflicts = [r for r in replies if _package_problem(r, "") and r.status == 409]
        replays = [r for r in replies if r.replayed]
        for reply in replies:
            if reply.error is not None or reply.failed:
                self._fail(check, "a duplicate failed", ("duplicate", reply))
            if _package_problem(reply) and reply not in conflicts:
                self._fail(check, "a duplicate got an unexpected problem", ("duplicate", reply))
        for reply in conflicts:
            retry_after = reply.header("Retry-After") or ""
            if not retry_after.isdigit() or int(retry_after) < 1:
                self._fail(check, "a 409 without a usable Retry-After", ("409", reply))
        if len(runs) > 1:
            self._fail(
                check,
                f"{len(runs)} of {threads} concurrent duplicates ran the view",
                *(("ran", reply) for reply in runs),
            )
        for reply in runs:
            self._expect_success(check, "duplicate that ran", reply)
        for reply in replays:
            if runs and (reply.status, reply.body) != (runs[0].status, runs[0].body):
                self._fail(
                    check, "a replay differs from the run", ("ran", runs[0]), ("replay", reply)
                )
        follow_up = self.send(key, catch=True)
        if runs:
            self._expect_same(check, runs[0], follow_up, "retry after the race")
        else:
            self._expect_success(check, "retry after a race that ran nothing", follow_up)
        self._expect_one_run(check, before, f"{threads} concurrent duplicates and a retry")
        result = Race(
            replies=tuple(replies),
            follow_up=follow_up,
            ran=len(runs),
            conflicts=len(conflicts),
            replays=len(replays),
            note=_SQLITE_NOTE if connections["default"].vendor == "sqlite" else "",
        )
        self.report.race = result
        self.report.passed.append(check)
        return result

    def all(
        self, *, other_client: _Client = None, fail: _Fail | None = None, race: int = 0
    ) -> Report:
        """Every check that the arguments allow: the replay and the key reuse always,
        the others with ``other_client``, ``fail`` and ``race`` (a thread count)."""
        self.replay()
        self.key_reuse()
        if other_client is not None:
            self.other_user(other_client)
        if fail is not None:
            self.failure(fail)
        if race:
            self.race(race)
        return self.report


def check_idempotent(
    client: _Client,
    method: str,
    path: str,
    data: Any = None,
    *,
    other_client: _Client = None,
    fail: _Fail | None = None,
    race: int = 0,
    **options: Any,
) -> Report:
    """Run every check on one endpoint and return the :class:`Report`; raise
    :class:`IdempotencyCheckFailed` at the first broken promise.

    ``check_idempotent(client, "post", "/orders/", {"item": "mug"},
    side_effects=Order.objects.count, other_client=bob, fail=failing("app.views.mail"),
    race=8)``. The arguments are those of :class:`IdempotencyChecks` and of its
    :meth:`IdempotencyChecks.all`.
    """
    checks = IdempotencyChecks(client, method, path, data, **options)
    return checks.all(other_client=other_client, fail=fail, race=race)


def _stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Which of a first answer's headers the package stores, so a replay must repeat."""
    from django.http import HttpResponse

    from django_idempotency import responses

    response = HttpResponse()
    del response["Content-Type"]
    for name, value in headers.items():
        response[name] = value
    return responses.storable_headers(response)


def _close_thread_connections() -> None:
    """Close this thread's connections, so no lock outlives it and the test database can
    be flushed; Django never closes an in-memory SQLite one, so its handle goes here."""
    from django.db import Error, connections

    for conn in connections.all(initialized_only=True):
        try:
            if conn.vendor == "sqlite" and conn.is_in_memory_db():  # type: ignore[attr-defined]
                if conn.connection is not None:
                    conn.connection.close()
                    conn.connection = None
                continue
            conn.close()
        except Error:
            conn.connection = None
