"""The declared public API: the API page, each public module's ``__all__`` and its source agree.

The public names are the ``::: django_idempotency.<module>.<name>`` blocks of the API page
(mkdocstrings renders them from the docstrings); per module they must be exactly its
``__all__``, and each must exist and carry a docstring of its own.

The rule for what else a public module may hold: every name it binds at top level (``def``,
``class``, an assignment, also under ``if`` or ``try``; imports bind nothing of its own) is
either in ``__all__``, prefixed with ``_``, a typing helper (a ``TypeVar``, ``TYPE_CHECKING``)
or imported by another module of the package (``from django_idempotency.<module> import name``
or ``<module>.name``): shared inside the package, with no promise to users, so it keeps its
name for the modules that use it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_idempotency"
API_PAGE = ROOT / "docs" / "reference" / "api.md"

PUBLIC = (
    "celery",
    "conditional",
    "conf",
    "decorators",
    "drf",
    "guard",
    "keys",
    "models",
    "once",
    "operation",
    "responses",
    "scopes",
    "signals",
    "testing",
    "urls",
)

# Names the rule would prefix in modules whose renames wait for their owner; each entry
# must still be there, so the list shrinks as they are renamed.
PENDING: dict[str, set[str]] = {}
# Public names whose docstring waits for their module's owner; the same rule applies.
PENDING_DOCSTRINGS: set[str] = set()
# What a module needs beyond Django, for the test runs that leave it out (the no-DRF run).
OPTIONAL = {"celery": {"celery"}, "drf": {"rest_framework"}}


def load(module: str) -> Any:
    """The module; skipped where what it needs is not installed (the no-DRF run), before
    importing it: ``drf`` imports without DRF, and system check E013 would then see it."""
    for needed in OPTIONAL.get(module, ()):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed")
    try:
        return importlib.import_module(f"django_idempotency.{module}")
    except ImportError as error:
        if error.name is not None and error.name.partition(".")[0] in OPTIONAL.get(module, ()):
            pytest.skip(f"{error.name} is not installed")
        raise


def documented() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for path in re.findall(r"^::: django_idempotency\.([\w.]+)\s*$", API_PAGE.read_text(), re.M):
        module, _, name = path.rpartition(".")
        names.setdefault(module, set()).add(name)
    return names


def source(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())


def bindings(tree: ast.Module) -> dict[str, ast.stmt]:
    """Top-level names the module binds itself, with the statement that binds each."""
    found: dict[str, ast.stmt] = {}

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name] = node  # the last one: an overload's implementation
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            found[name.id] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found[node.target.id] = node
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def docstring(tree: ast.Module, node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return ast.get_docstring(node)
    following = tree.body[tree.body.index(node) + 1 :][:1]  # an attribute's docstring
    if (
        following
        and isinstance(following[0], ast.Expr)
        and isinstance(following[0].value, ast.Constant)
        and isinstance(following[0].value.value, str)
    ):
        return following[0].value.value
    return None


def used_inside_package(module: str) -> set[str]:
    """Names of ``module`` that other modules of the package import or reach through it."""
    dotted = f"django_idempotency.{module}"
    short = module.rpartition(".")[2]
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / f"{module.replace('.', '/')}.py":
            continue
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == dotted:
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == "django_idempotency":
                aliases.update(a.asname or a.name for a in node.names if a.name == short)
            elif isinstance(node, ast.Import):
                aliases.update(a.asname for a in node.names if a.name == dotted and a.asname)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                used.add(node.attr)
    return used


def test_the_api_page_documents_exactly_the_public_modules() -> None:
    assert sorted(documented()) == sorted(PUBLIC)


@pytest.mark.parametrize("module", PUBLIC)
def test_the_documented_names_are_the_modules_all(module: str) -> None:
    declared = load(module).__all__
    assert len(declared) == len(set(declared)), "a name twice in __all__"
    assert sorted(documented().get(module, ())) == sorted(declared)


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_exists_and_has_a_docstring(module: str) -> None:
    imported: Any = load(module)
    tree = source(module)
    bound = bindings(tree)
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.{name} does not exist"
        assert name in bound, f"{module}.{name} is imported, not defined there"
        pending = f"{module}.{name}" in PENDING_DOCSTRINGS
        has_one = bool(docstring(tree, bound[name]))
        assert has_one != pending, f"{module}.{name}: " + (
            "drop it from PENDING_DOCSTRINGS" if pending else "no docstring"
        )


@pytest.mark.parametrize("module", PUBLIC)
def test_a_public_module_defines_nothing_else_public(module: str) -> None:
    imported: Any = load(module)
    shared = used_inside_package(module)
    undeclared = {
        name
        for name in bindings(source(module))
        if not name.startswith("_")
        and name not in imported.__all__
        and name != "TYPE_CHECKING"
        and not isinstance(getattr(imported, name, None), TypeVar)
        and name not in shared
    }
    pending = PENDING.get(module, set())
    assert pending <= undeclared, (
        f"prefixed or shared now, drop from PENDING: {sorted(pending - undeclared)}"
    )
    assert sorted(undeclared - pending) == [], "prefix it with _, or add it to __all__"
