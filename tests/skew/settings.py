"""The test settings with the clock-skew site's URLs: what its app servers run."""

from __future__ import annotations

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.skew.site"
