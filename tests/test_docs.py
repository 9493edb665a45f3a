"""The documentation agrees with the code: every setting, check, problem type, command
option, signal and public argument that exists is documented where users look for it.

These tests only read files and import the package; they need neither MkDocs nor a
database (CI builds the site separately with ``mkdocs build --strict``).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from datetime import timedelta
from pathlib import Path

import pytest

from django_idempotency import responses, signals
from django_idempotency.conf import DEFAULTS

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


def problems() -> list[responses.Problem]:
    """Every problem type the package can answer with: its ``type`` URI links to the docs."""
    modules = [responses]
    if importlib.util.find_spec("django_idempotency.conditional") is not None:
        modules.append(importlib.import_module("django_idempotency.conditional"))
    found = [
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, responses.Problem)
    ]
    assert found, "no Problem instances found in django_idempotency.responses"
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
def test_every_problem_type_has_its_anchor(problem: responses.Problem) -> None:
    """``type`` URIs point at reference/problems/#<slug>: the anchor must exist."""
    section = sections("reference/problems.md").get(problem.slug)
    assert section is not None, f"docs/reference/problems.md needs '{{ #{problem.slug} }}'"
    assert f'"title": "{problem.title}"' in section
    assert f'"status": {problem.status}' in section
    assert f"**{problem.status} " in section


@pytest.mark.parametrize("problem", problems(), ids=lambda problem: problem.slug)
def test_every_problem_type_is_in_the_http_reference(problem: responses.Problem) -> None:
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
    from django_idempotency.decorators import idempotent

    arguments = [
        name
        for name, parameter in inspect.signature(idempotent).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
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
    from django_idempotency.engine import Operation

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
