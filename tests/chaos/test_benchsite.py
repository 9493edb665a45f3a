"""The benchmark site is a plain Django project (no DRF in INSTALLED_APPS): it must pass
its system checks, or neither chaos.py nor overhead.py can migrate it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--fail-level", "ERROR"],
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
