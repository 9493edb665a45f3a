"""A versioned model for the conditional-update tests.

Its ``app_label`` names no installed app, so it needs no migration in ``testapp`` (and
no other test sees it); ``tests/strategy_tables.py`` creates its table for the test
database.
"""

from __future__ import annotations

from django.db import models


class Article(models.Model):
    """A resource two editors may change at once: ``version`` is its ETag."""

    title = models.CharField(max_length=100)
    body = models.TextField(blank=True, default="")
    version = models.PositiveIntegerField(default=1)

    class Meta:
        app_label = "strategy_tests"
        db_table = "strategy_tests_article"
