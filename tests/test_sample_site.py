"""The sample shop still starts: its settings import, its checks pass, its migrations are complete.

Run in a subprocess, because the sample has its own settings module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rest_framework")
pytest.importorskip("dj_database_url")

SAMPLE_SITE = Path(__file__).resolve().parent.parent / "sample_site"


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DATABASE_URL": "sqlite:///:memory:",
        "PYTHONPATH": os.pathsep.join([str(SAMPLE_SITE), str(SAMPLE_SITE.parent)]),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SAMPLE_SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sample_site_passes_checks_and_has_its_migrations() -> None:
    result = manage("check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    result = manage("makemigrations", "shop", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
