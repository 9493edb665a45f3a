"""The documentation agrees with the code: every setting, check, problem type, command
option, signal and public argument that exists is documented where users look for it,
and every sentence that states a behaviour is proven by a test.

The first part only reads files and imports the package; it needs neither MkDocs nor a
database (CI builds the site separately with ``mkdocs build --strict``). The second part,
``CLAIMS``, pairs each behaviour sentence of the pages with the test that proves it;
``RETRACTED`` lists sentences that were once on the pages and are false. The proofs that
no other module holds are at the end of this one, and those use the database.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from django_idempotency import problems as problem_types
from django_idempotency import responses, signals
from django_idempotency.conf import DEFAULTS
from django_idempotency.problems import Problem

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PURGE_COMMAND = "django_idempotency.management.commands.purge_idempotency_records"

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*(?:\{\s*#([^\s}]+)\s*\})?\s*$")
DEFAULT_LINE = re.compile(r"^\*\*Default:\*\*\s+`([^`]+)`", re.MULTILINE)


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def sections(page: str) -> dict[str, str]:
    """Heading id (the explicit ``{ #id }``, else the heading text) -> the section's text.

    A section runs to the next heading of the same or a higher level.
    """
    lines = read(page).splitlines()
    found: list[tuple[int, str, int]] = []
    fenced = False
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if match:
            level, text, anchor = len(match[1]), match[2], match[3]
            found.append((level, anchor or text.strip("`"), number))
    result = {}
    for index, (level, name, start) in enumerate(found):
        end = len(lines)
        for later_level, _name, later_start in found[index + 1 :]:
            if later_level <= level:
                end = later_start
                break
        result[name] = "\n".join(lines[start:end])
    return result


def literal(text: str) -> object:
    """A documented default: a Python literal, or ``timedelta(unit=number, ...)``."""
    call = re.fullmatch(r"timedelta\((.*)\)", text)
    if call is None:
        return ast.literal_eval(text)
    arguments = ast.parse(f"f({call[1]})", mode="eval").body
    assert isinstance(arguments, ast.Call) and not arguments.args
    return timedelta(**{kw.arg: ast.literal_eval(kw.value) for kw in arguments.keywords if kw.arg})


def problems() -> list[Problem]:
    """Every problem type the package can answer with: its ``type`` URI links to the docs."""
    found = [value for value in vars(problem_types).values() if isinstance(value, Problem)]
    assert found, "no Problem instances found in django_idempotency.problems"
    return found


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_setting_has_a_section(name: str) -> None:
    assert name in sections("reference/settings.md"), (
        f"docs/reference/settings.md needs a '## {name}' section"
    )


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_documented_default_is_the_real_default(name: str) -> None:
    section = sections("reference/settings.md")[name]
    match = DEFAULT_LINE.search(section)
    assert match, f"the {name} section needs a '**Default:** `...`' line"
    assert literal(match[1]) == DEFAULTS[name]


def test_settings_page_documents_no_unknown_setting() -> None:
    headings = {
        name
        for name, text in sections("reference/settings.md").items()
        if text.startswith("## ") and name.isupper()
    }
    assert headings <= set(DEFAULTS), f"documented but not in DEFAULTS: {headings - set(DEFAULTS)}"


def test_installation_page_shows_every_default() -> None:
    page = read("installation.md")
    for name in DEFAULTS:
        assert f'"{name}":' in page, f"installation.md's IDEMPOTENCY example lacks {name}"


def test_every_check_id_is_documented() -> None:
    source = (ROOT / "django_idempotency" / "checks.py").read_text(encoding="utf-8")
    ids = sorted(
        set(re.findall(r"django_idempotency\.[CEWI]\d{3}", source))
        | {"django_idempotency." + number for number in re.findall(r'"([CEWI]\d{3})"', source)}
    )
    assert ids, "no check ids found in checks.py"
    documented = sections("reference/checks.md")
    missing = [check_id for check_id in ids if check_id not in documented]
    assert not missing, f"docs/reference/checks.md needs a section per check id: {missing}"


@pytest.mark.parametrize("problem", problems(), ids=lambda problem: problem.slug)
def test_every_problem_type_has_its_anchor(problem: Problem) -> None:
    """``type`` URIs point at reference/problems/#<slug>: the anchor must exist."""
    section = sections("reference/problems.md").get(problem.slug)
    assert section is not None, f"docs/reference/problems.md needs '{{ #{problem.slug} }}'"
    assert f'"title": "{problem.title}"' in section
    assert f'"status": {problem.status}' in section
    assert f"**{problem.status} " in section


@pytest.mark.parametrize("problem", problems(), ids=lambda problem: problem.slug)
def test_every_problem_type_is_in_the_http_reference(problem: Problem) -> None:
    pages = read("reference/http.md") + read("reference/status-endpoint.md")
    pages += read("how-to/conditional-updates.md")
    assert f"`{problem.slug}`" in pages


def test_problem_base_url_resolves_to_the_problems_page() -> None:
    site_url = re.search(r"^site_url:\s*(\S+)", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE)
    assert site_url
    assert DEFAULTS["PROBLEM_BASE_URL"] == site_url[1] + "reference/problems/#"


def test_every_purge_option_is_documented() -> None:
    if importlib.util.find_spec(PURGE_COMMAND) is None:
        pytest.skip("the purge command does not exist yet")
    from django.core.management.base import BaseCommand

    module = importlib.import_module(PURGE_COMMAND)
    own = module.Command().create_parser("manage.py", "purge_idempotency_records")
    base = BaseCommand().create_parser("manage.py", "base")
    standard = {option for action in base._actions for option in action.option_strings}
    options = {
        option
        for action in own._actions
        for option in action.option_strings
        if option not in standard and option.startswith("--")
    }
    assert options, "the purge command has no options of its own"
    page = read("reference/management-command.md")
    missing = sorted(option for option in options if f"`{option}" not in page)
    assert not missing, f"docs/reference/management-command.md lacks {missing}"


def test_every_signal_is_documented() -> None:
    from django.dispatch import Signal

    names = sorted(name for name, value in vars(signals).items() if isinstance(value, Signal))
    assert names
    documented = sections("reference/signals.md")
    assert [name for name in names if name not in documented] == []


def test_every_status_field_is_documented() -> None:
    from django_idempotency import views

    fields = getattr(views, "FIELDS", None)
    if fields is None:
        pytest.skip("the status endpoint does not declare its FIELDS")
    page = read("reference/status-endpoint.md")
    assert [field for field in fields if f"| `{field}` |" not in page] == []


def test_every_decorator_argument_is_documented() -> None:
    from django_idempotency.guard import GuardOptions

    arguments = list(GuardOptions.__annotations__)  # what idempotent(**options) takes
    section = sections("reference/api.md")["idempotent"]
    assert [name for name in arguments if f"| `{name}` |" not in section] == []


def test_every_mixin_attribute_and_hook_is_documented() -> None:
    pytest.importorskip("rest_framework")
    from django_idempotency.drf import IdempotentMixin

    public = [
        name
        for name in vars(IdempotentMixin)
        if name.startswith(("idempotent_", "idempotency_", "get_idempotency_", "is_idempotent_"))
    ]
    section = sections("reference/api.md")["IdempotentMixin"]
    assert [name for name in public if f"`{name}" not in section] == []


def test_every_operation_member_is_documented() -> None:
    from django_idempotency.operation import Operation

    public = [name for name in vars(Operation) if not name.startswith("_")]
    section = sections("reference/api.md")["request.idempotency"]
    assert [name for name in public if f"`{name}" not in section] == []


def test_every_scope_function_is_documented() -> None:
    from django_idempotency import scopes

    functions = [
        name
        for name, value in vars(scopes).items()
        if inspect.isfunction(value) and value.__module__ == scopes.__name__
    ]
    section = sections("reference/api.md")["scopes"]
    assert [name for name in functions if f"`{name}(" not in section] == []


def test_navigation_lists_every_page_and_only_existing_pages() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", config, re.MULTILINE))
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert nav == pages


def test_changelog_page_includes_the_root_changelog() -> None:
    """One source: docs/changelog.md includes CHANGELOG.md instead of copying it."""
    assert '"../CHANGELOG.md"' in read("changelog.md")
    assert (ROOT / "CHANGELOG.md").is_file(), "CHANGELOG.md is missing: the docs build fails"


def test_docs_requirements_pin_mkdocs_material() -> None:
    requirements = read("requirements.txt")
    assert re.search(r"^mkdocs-material>=\d", requirements, re.MULTILINE)
    assert re.search(r"^mkdocs-include-markdown-plugin>=\d", requirements, re.MULTILINE)


def test_conditional_update_api_is_documented() -> None:
    pytest.importorskip("rest_framework")
    if importlib.util.find_spec("django_idempotency.conditional") is None:
        pytest.skip("conditional updates do not exist yet")
    from django_idempotency.conditional import conditional_update
    from django_idempotency.drf import ConditionalUpdateMixin

    page = read("how-to/conditional-updates.md")
    names = [
        name
        for name in vars(ConditionalUpdateMixin)
        if not name.startswith("_")
        # DRF's own methods, overridden to do the work: not part of this mixin's API.
        and name
        not in {"initial", "get_object", "perform_update", "handle_exception", "finalize_response"}
    ]
    names += [
        name
        for name, parameter in inspect.signature(conditional_update).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert [name for name in names if f"`{name}" not in page] == []


# Behaviour the pages state, and the test that proves each statement.
#
# A row names a page, a sentence from it (compared with runs of white space collapsed, so
# reflowing a paragraph does not break it) and the test that shows the code does what the
# sentence says, as "tests/<module>.py::<test>". Rewording a sentence means updating its
# row; a proof that is renamed or deleted fails here, and a proof that fails means the
# page is false. Add a row with every new sentence that promises a behaviour.


@dataclass(frozen=True)
class Claim:
    page: str
    sentence: str
    proof: str

    def __str__(self) -> str:
        return f"{self.page}: {self.sentence[:60]}"


LARGE = "tests/test_large_responses.py::"
EXPIRY = "tests/test_expiry.py::"
FAILURES = "tests/test_failures.py::"
EDGES = "tests/test_edges.py::"
HERE = "tests/test_docs.py::"

CLAIMS = [
    # Streamed responses: small sync streams are stored; long and async ones get the 303.
    Claim(
        "reference/http.md",
        "If it ends within the limit, it is stored, and a replay sends its bytes as one "
        "ordinary response, byte for byte.",
        LARGE + "test_small_stream_is_stored_and_replayed_byte_identical",
    ),
    Claim(
        "reference/http.md",
        "If it runs past the limit, the rest streams through to the first client unstored.",
        LARGE + "test_long_stream_is_delivered_intact_but_not_stored",
    ),
    Claim(
        "reference/http.md",
        "An async stream (an async iterator, served under ASGI) is never read ahead, so it "
        "is not stored.",
        HERE + "test_an_async_stream_is_not_stored_and_replays_as_303",
    ),
    Claim(
        "guarantees.md",
        "A sync streaming response within the limit is read into memory, stored and "
        "replayed byte for byte like any other response.",
        LARGE + "test_small_stream_is_stored_and_replayed_byte_identical",
    ),
    Claim(
        "reference/problems.md",
        "A sync stream within the limit is stored and replayed byte for byte, like any response.",
        LARGE + "test_small_stream_is_stored_and_replayed_byte_identical",
    ),
    Claim(
        "reference/api.md",
        "`NULL` when it was larger than `MAX_RESPONSE_BYTES`, or an async stream",
        HERE + "test_an_async_stream_is_not_stored_and_replays_as_303",
    ),
    # What a lease loss or a lock conflict leaves behind, per mode.
    Claim(
        "guarantees.md",
        "| two-phase (default) | rolled back with the attempt's transaction |",
        HERE + "test_what_a_lost_lease_leaves_behind",
    ),
    Claim(
        "guarantees.md",
        "| `atomic=False` | **kept**: each of them committed on its own when it ran |",
        HERE + "test_what_a_lost_lease_leaves_behind",
    ),
    Claim(
        "reference/problems.md",
        "With `atomic=False` there was no such transaction: the view's database writes "
        "committed as they ran and **stay**",
        HERE + "test_what_a_lost_lease_leaves_behind",
    ),
    Claim(
        "reference/problems.md",
        "In two-phase and single-transaction mode the attempt's transaction was rolled "
        "back: none of its writes were committed.",
        "tests/concurrency/test_lock_errors.py::test_lock_timeout_is_a_409_and_the_key_is_free",
    ),
    Claim(
        "reference/http.md",
        "with `atomic=False`, the view's writes made before the error stay committed, and "
        "the record is kept for the retry",
        "tests/concurrency/test_lock_errors.py::"
        "test_non_atomic_view_lock_conflict_is_a_409_and_the_retry_takes_over",
    ),
    # Concurrent duplicates of a single-transaction attempt that rolls back, per database.
    Claim(
        "guarantees.md",
        "| PostgreSQL | 1 runs, 6 replay its result |",
        HERE + "test_duplicates_of_a_delivery_that_rolls_back",
    ),
    Claim(
        "guarantees.md",
        "| MariaDB | 1 runs, 6 get `Busy` (deadlock 1213); their redelivery replays |",
        HERE + "test_duplicates_of_a_delivery_that_rolls_back",
    ),
    Claim(
        "guarantees.md",
        "| SQLite, shared in-memory database | 7 get `Busy` (`database is locked`), none "
        "runs; the redelivery runs |",
        HERE + "test_duplicates_of_a_delivery_that_rolls_back",
    ),
    Claim(
        "guarantees.md",
        "**one waiter runs; every other waiter gets a deadlock (1213)**",
        HERE + "test_duplicates_of_a_delivery_that_rolls_back",
    ),
    Claim(
        "guarantees.md",
        "| several duplicates wait and the first rolls back | not applicable: they got "
        "`409` while it ran; the next retry runs |",
        "tests/concurrency/test_duplicates.py::"
        "test_two_phase_duplicates_of_a_failed_attempt_retry_later",
    ),
    # A view that dooms its own transaction.
    Claim(
        "faq.md",
        "The client gets the view's own `409`, and a retry with the same key runs the view again",
        EDGES + "test_a_view_that_answers_its_own_integrity_error",
    ),
    Claim(
        "faq.md",
        "`transaction.set_rollback(True)` in the view has the same effect.",
        EDGES + "test_a_view_that_sets_rollback",
    ),
    Claim(
        "faq.md",
        "the `409` is stored and replayed like any `4xx` the view returns",
        HERE + "test_a_savepoint_keeps_a_caught_integrity_error_a_result",
    ),
    Claim(
        "faq.md",
        "With `atomic=False` the view runs in autocommit: the failed `INSERT` marks nothing, "
        "and the `409` it returns is stored and replayed.",
        "tests/test_wiring.py::test_a_view_handled_integrity_error_is_the_views_answer",
    ),
    Claim(
        "guarantees.md",
        "The client gets the view's own answer, nothing is stored, and a retry runs the view again",
        EDGES + "test_a_view_that_answers_its_own_integrity_error",
    ),
    # Wirings and ATOMIC_REQUESTS.
    Claim(
        "how-to/function-views.md",
        '| `@method_decorator(idempotent, name="dispatch")` on a class-based view | yes |',
        EDGES + "test_dispatch_carries_the_opt_out",
    ),
    Claim(
        "how-to/function-views.md",
        '| `@method_decorator(idempotent, name="post")` on a class-based view | no | single '
        "transaction, inside the request's; `atomic=False` is check `E014` |",
        EDGES + "test_method_decorator_on_a_handler_under_atomic_requests",
    ),
    Claim(
        "how-to/function-views.md",
        "| `@api_view` above `@idempotent` | no | single transaction, inside the request's; "
        "`atomic=False` is check `E014` | DRF's authentication, permissions and throttles |",
        EDGES + "test_api_view_above_idempotent_under_atomic_requests",
    ),
    Claim(
        "how-to/function-views.md",
        "| `@idempotent` above `@api_view` | yes | the view's own | DRF's authentication, "
        "permissions and throttles |",
        EDGES + "test_token_users_never_share_a_replay",
    ),
    Claim(
        "how-to/drf.md",
        "| `@idempotent` above `@api_view` | yes | the view's own |",
        EDGES + "test_idempotent_above_api_view_keeps_the_opt_out",
    ),
    Claim(
        "how-to/transaction-modes.md",
        "check [`E014`](../reference/checks.md#django_idempotency.E014) names every URL "
        "pattern where it would happen, at start-up",
        EDGES + "test_atomic_false_where_the_opt_out_cannot_reach_is_refused_at_start_up",
    ),
    Claim(
        "how-to/transaction-modes.md",
        "run as one transaction *inside the open one*: claim, view and finalize",
        EDGES + "test_an_own_atomic_block_around_a_two_phase_view",
    ),
    Claim(
        "how-to/function-views.md",
        "Every cell of this table, with and without `ATOMIC_REQUESTS`, is driven by the "
        "project's wiring test",
        "tests/test_wiring.py::test_the_matrix_is_whole",
    ),
    Claim(
        "how-to/transaction-modes.md",
        "at decoration time for `@idempotent`, and when the class is defined for the mixin",
        HERE + "test_the_mixin_refuses_contradictory_modes_when_the_class_is_defined",
    ),
    Claim(
        "reference/api.md",
        "or durations the decorator would refuse) raise `ImproperlyConfigured` when the class "
        "is defined",
        EDGES + "test_contradictory_mixin_durations_are_refused_at_class_definition",
    ),
    # Protecting stored responses: encryption, redaction, the admin permission.
    Claim(
        "how-to/protecting-responses.md",
        "Records stored **before** you turned encryption on still replay as they are",
        "tests/test_encryption.py::test_plaintext_records_from_before_encryption_still_replay",
    ),
    Claim(
        "how-to/protecting-responses.md",
        "An encrypted record that none of the configured keys opens is **never** replayed as "
        "ciphertext and never run again.",
        "tests/test_encryption.py::test_a_record_no_key_opens_answers_503_and_never_runs_again",
    ),
    Claim(
        "how-to/protecting-responses.md",
        "The **first** client gets the view's response untouched; only the stored copy and so "
        "every **replay** is redacted.",
        "tests/test_encryption.py::"
        "test_redact_drops_fields_before_storing_but_not_from_the_first_answer",
    ),
    Claim(
        "how-to/protecting-responses.md",
        "Without keys the package never imports `cryptography`, so it works without it.",
        "tests/test_encryption.py::test_without_cryptography_encryption_off_works",
    ),
    Claim(
        "how-to/protecting-responses.md",
        "so a record that changed meanwhile is left alone.",
        "tests/test_encryption.py::test_a_record_changed_after_it_was_read_is_not_overwritten",
    ),
    Claim(
        "how-to/protecting-responses.md",
        "Others who may view records see everything else (status, size, dates, the attempt), "
        "with the headers and body hidden.",
        "tests/test_encryption.py::test_viewing_records_does_not_show_stored_responses",
    ),
    # Expiry, unguarded requests, per-view durations.
    Claim(
        "reference/http.md",
        "A record still in progress whose lease is live never counts as expired",
        EXPIRY + "test_expired_in_progress_record_with_live_lease_is_still_in_progress",
    ),
    Claim(
        "reference/api.md",
        "`id` is `None` (there is no operation, so nothing to look up at the status endpoint)",
        EDGES + "test_unguarded_request_has_no_operation_id",
    ),
    Claim(
        "reference/api.md",
        "raises `ImproperlyConfigured` where the view is decorated",
        EDGES + "test_contradictory_per_view_durations_are_refused_at_decoration",
    ),
    Claim(
        "guarantees.md",
        "If the view raises, answers 5xx, or DRF answers with an error response, the "
        "business writes are rolled back and the record is released.",
        FAILURES + "test_failed_attempt_rolls_back_and_releases_the_key",
    ),
]

# Sentences the pages once held that the code proves false: none may come back, on any
# page. Each names why it is false and the test that shows it.
RETRACTED = [
    (
        "or streamed",
        "a sync stream within MAX_RESPONSE_BYTES is stored and replayed",
        LARGE + "test_small_stream_is_stored_and_replayed_byte_identical",
    ),
    (
        "Nothing was committed",
        "an atomic=False view's own writes stay committed after a lease loss",
        HERE + "test_what_a_lost_lease_leaves_behind",
    ),
    (
        "one duplicate gets `409 idempotency-lock-conflict`, another runs",
        "on MariaDB every waiter but one is a deadlock victim",
        HERE + "test_duplicates_of_a_delivery_that_rolls_back",
    ),
    (
        "`id` is a fresh UUID",
        "an unguarded request has no operation id",
        EDGES + "test_unguarded_request_has_no_operation_id",
    ),
    (
        "`request.idempotency` is not set",
        "an unguarded request gets the Unguarded stand-in",
        EDGES + "test_unguarded_request_has_no_operation_id",
    ),
]


def flat(text: str) -> str:
    return " ".join(text.split())


def defined_tests(path: Path) -> set[str]:
    """The test functions a module defines, at its top level or in its classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        nodes = node.body if isinstance(node, ast.ClassDef) else [node]
        for inner in nodes:
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.add(inner.name)
    return {name for name in found if name.startswith("test_")}


def assert_proof_exists(proof: str) -> None:
    module, _, name = proof.partition("::")
    path = ROOT / module
    assert path.is_file(), f"the proof's module {module} does not exist"
    assert name in defined_tests(path), f"{module} has no test {name}"


@pytest.mark.parametrize("claim", CLAIMS, ids=str)
def test_the_claim_is_on_its_page(claim: Claim) -> None:
    assert flat(claim.sentence) in flat(read(claim.page)), (
        f"docs/{claim.page} no longer says {claim.sentence!r}: update CLAIMS with the page"
    )


@pytest.mark.parametrize("claim", CLAIMS, ids=str)
def test_the_claim_has_a_proof(claim: Claim) -> None:
    assert_proof_exists(claim.proof)


@pytest.mark.parametrize(("sentence", "why", "proof"), RETRACTED, ids=[r[0] for r in RETRACTED])
def test_no_page_repeats_a_retracted_claim(sentence: str, why: str, proof: str) -> None:
    assert_proof_exists(proof)
    saying = [
        str(page.relative_to(DOCS))
        for page in sorted(DOCS.rglob("*.md"))
        if flat(sentence) in flat(page.read_text(encoding="utf-8"))
    ]
    assert saying == [], f"{saying} say {sentence!r}, but {why} ({proof})"


def examples(page: str) -> dict[str, dict[str, Any]]:
    """Heading id -> the JSON example body of that section."""
    found = {}
    for name, text in sections(page).items():
        block = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
        if block:
            found[name] = json.loads(block[1])
    return found


def problem_examples() -> list[tuple[str, Callable[[], Any]]]:
    """The problem answers that the package builds without a database, one per slug."""
    from django_idempotency.models import IdempotencyRecord

    operation = uuid.UUID("6ac32fb1-c16a-4166-8e54-d511e5b849fe")
    not_stored = IdempotencyRecord(
        pk=operation, response_status=201, response_headers={"Location": "/orders/42/"}
    )
    tombstone = IdempotencyRecord(
        pk=operation,
        response_status=201,
        completed_at=datetime(2026, 11, 2, 9, 41, 7, tzinfo=timezone.utc),
    )
    return [
        ("idempotency-key-missing", responses.missing_key),
        (
            "idempotency-key-invalid",
            lambda: responses.invalid_key("Send exactly one key, not a list."),
        ),
        ("idempotency-key-reused", lambda: responses.mismatch(not_stored)),
        ("idempotency-key-expired", lambda: responses.key_expired(tombstone)),
        (
            "idempotency-request-in-progress",
            lambda: responses.in_progress(IdempotencyRecord(pk=operation), 89),
        ),
        ("idempotency-lock-conflict", lambda: responses.busy("lock", 1)),
        ("idempotency-lease-lost", lambda: responses.busy("lease_lost", 1)),
        ("idempotency-response-not-stored", lambda: responses.replay(not_stored)),
        ("idempotency-unavailable", responses.unavailable),
        ("idempotency-body-too-large", responses.too_large),
    ]


@pytest.mark.parametrize(
    ("slug", "make"), problem_examples(), ids=[slug for slug, _make in problem_examples()]
)
def test_the_example_bodies_are_what_the_package_sends(slug: str, make: Any) -> None:
    """problems.md says its example bodies are the exact texts sent: hold it to that."""
    documented = examples("reference/problems.md").get(slug)
    assert documented is not None, f"problems.md has no JSON example for {slug}"
    assert documented == json.loads(make().content)


# The proofs no other module holds.


def guarded_post(view: Callable[..., Any], key: str, data: Any = None) -> Any:
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    request = RequestFactory().post(
        "/docs-proof/",
        data=json.dumps(data or {}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    request.user = AnonymousUser()
    return view(request)


async def _chunks() -> AsyncIterator[bytes]:
    yield b"async "
    yield b"stream"


@pytest.mark.django_db
def test_an_async_stream_is_not_stored_and_replays_as_303() -> None:
    from django.http import StreamingHttpResponse

    from django_idempotency.decorators import idempotent
    from django_idempotency.models import IdempotencyRecord, Status
    from tests.testapp.models import Order

    @idempotent
    def view(request: Any) -> StreamingHttpResponse:
        order = Order.objects.create(reference="async")
        response = StreamingHttpResponse(_chunks(), status=201)
        response["Location"] = f"/orders/{order.pk}/"
        return response

    first = guarded_post(view, "k1")
    assert first.is_async and first.status_code == 201
    record = IdempotencyRecord.objects.get()
    assert (record.status, record.response_body) == (Status.COMPLETED, None)
    again = guarded_post(view, "k1")
    assert again.status_code == 303
    assert json.loads(again.content)["type"].endswith("idempotency-response-not-stored")
    assert again["Location"] == f"/orders/{Order.objects.get().pk}/"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("atomic", [True, False], ids=["two-phase", "atomic-false"])
def test_what_a_lost_lease_leaves_behind(atomic: bool) -> None:
    """A retry took the operation over while this attempt ran (its lease token changed):
    two-phase rolls the attempt's writes back; atomic=False has already committed them."""
    from django.http import JsonResponse

    from django_idempotency.decorators import idempotent
    from django_idempotency.models import IdempotencyRecord, Status
    from tests.testapp.models import Order

    @idempotent(atomic=atomic)
    def view(request: Any) -> JsonResponse:
        Order.objects.create(reference="lost lease")
        IdempotencyRecord.objects.filter(pk=request.idempotency.id).update(lease_token=uuid.uuid4())
        return JsonResponse({}, status=201)

    answer = guarded_post(view, "k1")
    assert answer.status_code == 409
    assert json.loads(answer.content)["type"].endswith("idempotency-lease-lost")
    assert Order.objects.filter(reference="lost lease").count() == (0 if atomic else 1)
    record = IdempotencyRecord.objects.get()  # it belongs to the retry that took it over
    assert record.status == Status.IN_PROGRESS and record.response_body is None


@pytest.mark.django_db(transaction=True)
def test_a_savepoint_keeps_a_caught_integrity_error_a_result() -> None:
    from django.db import IntegrityError, transaction
    from django.http import JsonResponse

    from django_idempotency.decorators import idempotent
    from tests.testapp.models import Charge

    Charge.objects.create(derived_key="taken")
    calls = []

    @idempotent
    def view(request: Any) -> JsonResponse:
        calls.append(1)
        try:
            with transaction.atomic():
                Charge.objects.create(derived_key="taken")
        except IntegrityError:
            return JsonResponse({"error": "duplicate"}, status=409)
        return JsonResponse({}, status=201)  # pragma: no cover - the row exists

    first = guarded_post(view, "k1")
    assert (first.status_code, json.loads(first.content)) == (409, {"error": "duplicate"})
    again = guarded_post(view, "k1")
    assert again["Idempotent-Replayed"] == "true"
    assert (again.status_code, again.content) == (409, first.content)
    assert calls == [1]


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_duplicates_of_a_delivery_that_rolls_back() -> None:
    """Seven deliveries wait on the first one's uncommitted claim; it then fails. What the
    seven get differs per database (guarantees.md); the work runs once on every one."""
    from django.db import connection

    from django_idempotency.once import Busy, once
    from tests.concurrency.threads import Worker
    from tests.testapp.models import Order

    waiters = 7
    claimed = threading.Event()
    answered: list[str] = []
    in_memory = connection.vendor == "sqlite" and connection.is_in_memory_db()

    def blocked() -> int:
        """How many of the waiters' statements wait on a lock right now."""
        if in_memory:  # shared-cache SQLite never waits: each waiter answers at once
            return len(answered)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted "
                    "AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                )
            elif connection.vendor == "mysql":  # INNODB_TRX is a cache: it lags
                cursor.execute(
                    "SELECT count(*) FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID() AND info LIKE %s",
                    ["%INSERT IGNORE%"],
                )
            else:
                pytest.skip("a file SQLite database: its lock waits are not observable")
            return int(cursor.fetchone()[0])

    def first() -> None:
        with once("msg:1", scope="docs") as run:
            assert run.first
            claimed.set()
            for _ in range(1500):  # at most 15 s; the loop ends as soon as all wait
                if blocked() >= waiters:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the duplicates never all waited")
            raise RuntimeError("the first delivery fails and rolls back")

    def duplicate() -> str:
        assert claimed.wait(15)
        try:
            with once("msg:1", scope="docs") as run:
                if run.first:
                    Order.objects.create(reference="msg:1")
                    run.result = "done"
            answer = "ran" if run.first else "replayed"
        except Busy:
            answer = "busy"
        answered.append(answer)
        return answer

    failing = Worker(first)
    assert claimed.wait(15)
    duplicates = [Worker(duplicate) for _ in range(waiters)]
    failure = failing.result()
    assert isinstance(failure, RuntimeError) and "rolls back" in str(failure), failure
    outcome = Counter(worker.result() for worker in duplicates)

    expected = {
        "postgresql": {"ran": 1, "replayed": 6},
        "mysql": {"ran": 1, "busy": 6},
        "sqlite": {"busy": 7},
    }[connection.vendor]
    assert dict(outcome) == expected
    with once("msg:1", scope="docs") as run:  # the redelivery
        if run.first:
            Order.objects.create(reference="msg:1")
            run.result = "done"
    assert run.result == "done"
    assert run.first == (connection.vendor == "sqlite")
    assert Order.objects.filter(reference="msg:1").count() == 1


def test_the_http_reference_lists_the_stored_and_the_never_stored_headers() -> None:
    section = sections("reference/http.md")["Replayed responses"]
    stored, never = section.split("**never stored or replayed**")
    named = {name.lower() for name in re.findall(r"`([A-Za-z-]+)`", stored)}
    refused = {name.lower() for name in re.findall(r"`([A-Za-z-]+)`", never)}
    assert sorted(responses._STORED_HEADERS - named) == []
    assert sorted(responses._NEVER_STORED - refused) == []
    assert sorted(named & responses._NEVER_STORED) == []


def test_the_mixin_refuses_contradictory_modes_when_the_class_is_defined() -> None:
    pytest.importorskip("rest_framework")
    from django.core.exceptions import ImproperlyConfigured
    from rest_framework.views import APIView

    from django_idempotency.drf import IdempotentMixin

    attributes = {"idempotency_single_transaction": True, "idempotency_atomic": False}
    with pytest.raises(ImproperlyConfigured, match="single_transaction"):
        type("Contradictory", (IdempotentMixin, APIView), attributes)
