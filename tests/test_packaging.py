"""What a newcomer meets before the code: the index page, the sdist, the docs site, cron.

The README is the package's long description on PyPI, where a relative link leads
nowhere: every link is absolute, to a page that exists. The sdist ships the changelog and
no tests (they need the repository around them). ``docs/requirements.txt`` is for pip,
not a page. A cron entry is one line: cron has no ``\\`` continuations.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from django_idempotency import __version__
from django_idempotency.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib on 3.10
SOURCE_URL = re.search(r'^Source = "([^"]+)"$', PYPROJECT, re.MULTILINE)
assert SOURCE_URL is not None
REPOSITORY = SOURCE_URL[1]
SITE = DEFAULTS["PROBLEM_BASE_URL"].removesuffix("reference/problems/#")
SOURCE = REPOSITORY + "/blob/main/"
RAW = REPOSITORY + "/raw/main/"  # images: a blob URL answers with a page, not the PNG
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINKS = re.findall(r"\]\(([^)\s]+)\)", README)


def test_the_readme_is_the_long_description() -> None:
    assert re.search(r'^readme = "README.md"$', PYPROJECT, re.MULTILINE)
    assert LINKS


@pytest.mark.parametrize("link", LINKS)
def test_every_readme_link_is_absolute_and_leads_somewhere(link: str) -> None:
    target = link.partition("#")[0]
    if target.startswith(SITE):
        page = target.removeprefix(SITE).strip("/") or "index"
        assert (DOCS / f"{page}.md").is_file() or (DOCS / page / "index.md").is_file(), link
    elif target.startswith((SOURCE, RAW)):
        assert (ROOT / target.removeprefix(SOURCE).removeprefix(RAW)).exists(), link
    else:
        assert target == REPOSITORY, f"{link}: neither the docs site nor the repository"


def test_the_readme_does_not_send_newcomers_to_an_index_that_lacks_the_package() -> None:
    """Until the first release, the install commands are from a clone or a wheel."""
    if not re.search(r"(\.dev|a|b|rc)\d*$", __version__):
        pytest.skip(f"{__version__} is a release")
    for page in (README, (DOCS / "installation.md").read_text(encoding="utf-8")):
        assert "is not on PyPI yet" in page
        commands = re.findall(r"^\$? ?python -m pip install (.*)$", page, re.MULTILINE)
        assert commands
        assert all("/path/to/" in command or "--find-links" in command for command in commands)


def test_the_sdist_ships_the_changelog_and_no_tests() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "include CHANGELOG.md" in manifest
    assert "prune tests" in manifest


def test_the_docs_site_leaves_out_the_docs_requirements() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    excluded = re.search(r"^exclude_docs: \|\n((?:  .*\n)+)", mkdocs, re.MULTILINE)
    assert excluded is not None
    assert "requirements.txt" in excluded[1].split()


def test_no_cron_entry_is_continued_over_lines() -> None:
    for page in DOCS.rglob("*.md"):
        for block in re.findall(r"^```cron.*?\n(.*?)^```", page.read_text(), re.M | re.S):
            assert not [line for line in block.splitlines() if line.endswith("\\")], page
