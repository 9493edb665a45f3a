"""The benchmark site is a plain Django project (no DRF in INSTALLED_APPS): it must pass
its system checks, or neither chaos.py nor overhead.py can migrate it. Its settings come
from the environment chaos.py sets, so a knob that did not reach them would measure the
default while the report named another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return in_site(tmp_path, "-m", "django", "check", "--fail-level", "ERROR", **env)


def in_site(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=BENCHMARKS,
        env={
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'check.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "benchsite.settings",
            "PYTHONPATH": str(BENCHMARKS),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_project_without_drf_passes_the_system_checks(tmp_path: Path) -> None:
    result = check(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "setting"), [("", "unset"), ("auto", "'auto'"), ("on", "True"), ("off", "False")]
)
def test_bench_session_locks_sets_the_setting_or_leaves_its_default(
    tmp_path: Path, value: str, setting: str
) -> None:
    result = in_site(
        tmp_path,
        "-c",
        "from django.conf import settings; chosen = settings.IDEMPOTENCY; "
        "print(repr(chosen['SESSION_LOCKS']) if 'SESSION_LOCKS' in chosen else 'unset')",
        BENCH_SESSION_LOCKS=value,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == setting
