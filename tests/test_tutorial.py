"""docs/tutorial.md, followed word for word in a new directory, so that it cannot drift.

The page is the script: its ``title="<path>"`` code blocks are written to the project (a
title ending in ", at the end" appends), and its console blocks run in order. A ``$ ``
line is a command; the lines up to the next command are its documented output, which
the real output must match. ``django-admin`` and ``python`` are this interpreter, and
``curl`` is spoken with the standard library (CI has no curl). ``runserver`` is started
on a free port without the autoreloader; the test restarts it after each file the page
changes, which is what the reloader would do.

Ids, tokens and times cannot match: each such value in the page stands for the one the
server sent, consistently, and later commands get the real one (the token alice got is
the one her requests send). Headers the page says it leaves out are dropped.

The project runs on SQLite, as the page says, unless the suite runs on PostgreSQL or
MariaDB: then on a database of its own beside the suite's (``<test database>_tutorial``),
and step 5's documented ``409`` is what the server answers. On SQLite the duplicate waits
and gets the replay (the page's note), and the documented ``409`` is compared with what
the package builds for it.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import connection

from tests.conftest import needs_drf

PAGE = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
DOCUMENTED_ORIGIN = "http://127.0.0.1:8000"
LEFT_OUT = {
    "date",
    "server",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
}
VOLATILE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|\b[0-9a-f]{40}\b"
    r"|(?<=Retry-After: )\d+"
)
# Idempotency-Expires: any HTTP-date stands for any other (on MySQL/MariaDB a first
# response's comes from the app server's clock, a replay's from the record's).
HTTP_DATE = re.compile(r"(?<=Idempotency-Expires: )\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT")
BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)

pytestmark = needs_drf


@dataclass
class Step:
    """One thing the page tells the reader to do."""

    section: str
    file: str | None = None
    append: bool = False
    text: str = ""
    command: str = ""
    output: list[str] = field(default_factory=list)


def steps() -> list[Step]:
    page = PAGE.read_text(encoding="utf-8")
    found: list[Step] = []
    for match in BLOCK.finditer(page):
        section = (re.findall(r"^## (.*)$", page[: match.start()], re.MULTILINE) or [""])[-1]
        language, title, body = match[1], match[2], match[3]
        if title:
            path, _, where = title.partition(", ")
            assert where in {"", "at the end"}, f"unknown file title {title!r}"
            found.append(Step(section, file=path, append=bool(where), text=body))
        elif language == "console":
            found += commands(section, body)
    return found


def commands(section: str, block: str) -> list[Step]:
    found: list[Step] = []
    lines = iter(block.rstrip("\n").split("\n"))
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            found.append(Step(section, command=command))
        else:
            assert found, f"{section}: output before any command: {line!r}"
            found[-1].output.append(line)
    for step in found:
        while step.output and not step.output[-1]:
            step.output.pop()
    return found


class Values:
    """Which id, token or time of the page stands for which real one."""

    def __init__(self) -> None:
        self.real: dict[str, str] = {}

    def known(self, text: str) -> None:
        for value in VOLATILE.findall(text):
            self.real.setdefault(value, value)

    def substitute(self, text: str) -> str:
        return VOLATILE.sub(lambda m: self.real.get(m[0], m[0]), text)

    def match(self, documented: list[str], actual: list[str], what: str) -> None:
        """Line by line equal, but for volatile values: each value of the page stands for
        one real value wherever it appears (two times may fall in the same millisecond)."""
        assert len(documented) == len(actual), f"{what}:\n" + "\n".join(actual)
        documented = [HTTP_DATE.sub("<date>", line) for line in documented]
        actual = [HTTP_DATE.sub("<date>", line) for line in actual]
        for page_line, real_line in zip(documented, actual):
            skeleton = VOLATILE.split(page_line), VOLATILE.split(real_line)
            assert skeleton[0] == skeleton[1], f"{what}: page {page_line!r}, real {real_line!r}"
            for page_value, real_value in zip(
                VOLATILE.findall(page_line), VOLATILE.findall(real_line)
            ):
                seen = self.real.setdefault(page_value, real_value)
                assert seen == real_value, (
                    f"{what}: {page_value} stood for {seen}, now {real_value}"
                )


class Database:
    """The tutorial project's own database on the suite's PostgreSQL or MariaDB server."""

    def __init__(self) -> None:
        suite = connection.settings_dict
        self.name = f"test_{suite['NAME'].removeprefix('test_')}_tutorial"
        self.settings = {
            **{name: suite[name] for name in ("ENGINE", "HOST", "PORT", "USER", "PASSWORD")},
            "NAME": self.name,
            "OPTIONS": suite.get("OPTIONS", {}),
        }

    def create(self) -> None:
        self.drop()
        charset = " CHARACTER SET utf8mb4" if connection.vendor == "mysql" else ""
        with connection._nodb_cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(self.name)}{charset}")

    def drop(self) -> None:
        with connection._nodb_cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {connection.ops.quote_name(self.name)}")

    def override(self) -> str:
        """Appended to the tutorial's settings: the one line the page does not have."""
        return f"\nDATABASES = {{'default': {self.settings!r}}}\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Project:
    """The reader's directory, shell and terminal with runserver."""

    def __init__(self, root: Path, database: Database | None) -> None:
        self.root = root
        self.variables: dict[str, str] = {}
        self.values = Values()
        self.server: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.background: list[threading.Thread] = []
        self.background_answers: list[str] = []
        self.database = database
        self.env = {
            name: value
            for name, value in os.environ.items()
            if name not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH"}
        }

    def write(self, step: Step) -> None:
        path = self.root / step.file  # type: ignore[operator]
        assert not step.append or path.exists(), f"{step.file} does not exist to append to"
        with path.open("a" if step.append else "w", encoding="utf-8") as file:
            file.write(("\n" if step.append else "") + step.text)
            if self.database is not None and step.file == "mysite/settings.py":
                file.write(self.database.override())
        if self.server is not None:
            self.finish_background()  # the reader saw it answer; a reload would cut it off
            self.start_server()

    def finish_background(self) -> None:
        for thread in self.background:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a background request did not finish"
        answered = [answer.split("\n", 1)[0] for answer in self.background_answers]
        assert len(answered) == len(self.background), "a background request failed"
        assert all(line.startswith("HTTP/1.1 2") for line in answered), answered
        self.background.clear()
        self.background_answers.clear()

    def run(self, step: Step) -> None:
        command = self.values.substitute(step.command)
        self.values.known(command)
        assigned = re.fullmatch(r"(\w+)=(\S+)", command)
        if assigned:
            self.variables[assigned[1]] = assigned[2]
            return
        command = re.sub(r"\$(\w+)", lambda m: self.variables[m[1]], command)
        background = command.endswith(" &")
        outputs = [self.one(part, background) for part in command.rstrip(" &").split(" && ")]
        if background:
            assert not step.output, f"{step.section}: a background command shows output"
            return
        actual = "\n".join(outputs).rstrip("\n").split("\n") if step.output else []
        if self.is_sqlite_duplicate(step, actual):
            return
        self.values.match(step.output, actual, f"{step.section}: $ {step.command}")

    def one(self, command: str, background: bool) -> str:
        words = shlex.split(command)
        env = dict(self.env)
        while re.fullmatch(r"\w+=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        program, arguments = words[0], words[1:]
        if program == "curl":
            if background:
                answers = self.background_answers
                thread = threading.Thread(
                    target=lambda: answers.append(curl([*self.url(arguments), "-i"]))
                )
                thread.start()
                self.background.append(thread)
                self.wait_for_claim(arguments)
                return ""
            return curl(self.url(arguments))
        if arguments[:2] == ["manage.py", "runserver"]:
            assert arguments == ["manage.py", "runserver"], command
            self.start_server()
            return ""
        executable = {"python": [sys.executable], "django-admin": [sys.executable, "-m", "django"]}
        done = subprocess.run(
            executable[program] + arguments,
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"$ {command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def url(self, arguments: list[str]) -> list[str]:
        origin = f"http://127.0.0.1:{self.port}"
        return [argument.replace(DOCUMENTED_ORIGIN, origin) for argument in arguments]

    def start_server(self) -> None:
        self.stop_server()
        self.server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.server.poll() is None, "runserver exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "runserver did not start"
                time.sleep(0.05)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=30)
            self.server = None

    def wait_for_claim(self, arguments: list[str]) -> None:
        """A reader types the next command after the first one started: wait for its claim,
        as the status endpoint shows it (the function view's records are anonymous)."""
        key = next(
            value.partition(":")[2].strip()
            for flag, value in itertools.pairwise(arguments)
            if flag == "-H" and value.lower().startswith("idempotency-key:")
        )
        lookup = f"http://127.0.0.1:{self.port}/idempotency/operations/?key={key}"
        deadline = time.monotonic() + 30
        while not curl([lookup, "-i"]).startswith("HTTP/1.1 200"):
            assert time.monotonic() < deadline, f"no record for {key}"
            time.sleep(0.05)

    def records(self) -> list[list[Any]]:
        self.finish_background()
        columns = '"key", "scope", "status", "method", "route", "response_status"'
        script = (
            "import json; from django_idempotency.models import IdempotencyRecord as R; "
            f"print(json.dumps(list(R.objects.order_by('-created_at').values_list({columns}))))"
        )
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", script],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        records: list[list[Any]] = json.loads(done.stdout)
        return records

    def is_sqlite_duplicate(self, step: Step, actual: list[str]) -> bool:
        """Step 5 on SQLite: the note's replay, and the page's 409 is the package's."""
        if not step.output or not step.output[0].startswith("HTTP/1.1 409"):
            return False
        if self.database is not None:
            return False
        from django_idempotency import responses
        from django_idempotency.models import IdempotencyRecord

        documented = json.loads(step.output[-1])
        operation = uuid.UUID(documented["operation"].rstrip("/").rsplit("/", 1)[1])
        retry_after = int(next(h for h in step.output if h.startswith("Retry-After:")).split()[1])
        sent = responses.in_progress(IdempotencyRecord(pk=operation), retry_after)
        assert documented == json.loads(sent.content)
        headers = [f"{name}: {value}" for name, value in sent.items()]
        headers.append(f"Content-Length: {len(sent.content)}")
        shown = ("Vary:", "Idempotency-Expires:")  # the record here has no expiry
        assert [line for line in step.output[1:-2] if not line.startswith(shown)] == headers
        assert actual[0] == "HTTP/1.1 201 Created", actual
        assert "Idempotent-Replayed: true" in actual, actual
        return True

    def close(self) -> None:
        self.finish_background()
        self.stop_server()


def curl(arguments: list[str]) -> str:
    """What ``curl`` prints for the options the page uses (-i, -s, -X, -H, -d)."""
    method, headers, data, include, url = None, {}, None, False, None
    words = iter(arguments)
    for word in words:
        if word == "-i":
            include = True
        elif word == "-s":
            pass
        elif word in {"-si", "-is"}:
            include = True
        elif word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            data = next(words).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        else:
            assert not word.startswith("-"), f"curl option {word} is not spoken here"
            url = word
    assert url is not None
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=60)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.request(method or ("POST" if data is not None else "GET"), path, data, headers)
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    if not include:
        return body
    reason = RENAMED_REASONS.get(response.reason, response.reason)
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines += [f"{n}: {v}" for n, v in response.getheaders() if n.lower() not in LEFT_OUT]
    return "\n".join([*lines, "", body])


# Python 3.13 took RFC 9110's reason phrases, which Django sends; the page shows 3.10-3.12's.
RENAMED_REASONS = {"Unprocessable Content": "Unprocessable Entity"}


@pytest.fixture
def project(tmp_path: Path, django_db_blocker: Any) -> Iterator[Project]:
    database = None if connection.vendor == "sqlite" else Database()
    if database is not None:
        with django_db_blocker.unblock():
            database.create()
    reader = Project(tmp_path, database)
    try:
        yield reader
    finally:
        reader.close()
        if database is not None:
            with django_db_blocker.unblock():
                database.drop()


def test_the_tutorial_runs_as_written(project: Project) -> None:
    table: list[tuple[str, ...]] = []
    for step in steps():
        if step.file:
            project.write(step)
        else:
            project.run(step)
    page = PAGE.read_text(encoding="utf-8")
    section = page[page.index("## 7.") : page.index("## 8.")]
    for row in re.findall(r"^\| `([^`]+)` \|(.*)\|$", section, re.MULTILINE):
        table.append((row[0], *(cell.strip().strip("`") for cell in row[1].split("|"))))
    login = curl([f"http://127.0.0.1:{project.port}/admin/login/", "-i"])
    assert login.startswith("HTTP/1.1 200 OK"), "step 7 logs in at /admin/"
    records = project.records()
    assert len(table) == len(records), records
    for documented, (key, *rest) in zip(table, records):
        assert key.startswith(documented[0].rstrip("…"))
        assert list(documented[1:]) == [str(value) for value in rest]


def test_the_steps_cover_the_page() -> None:
    """Every code block of the page is a step: a file to write or commands to run."""
    page = PAGE.read_text(encoding="utf-8")
    opened = re.findall(r"^```(.+)$", page, re.MULTILINE)
    parsed = list(BLOCK.finditer(page))
    assert len(parsed) == len(opened)
    assert all(block[2] or block[1] == "console" for block in parsed), opened
    assert sum(1 for step in steps() if step.file) == sum(1 for block in parsed if block[2])
