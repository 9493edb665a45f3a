"""Retries that are boring: run a Django view's side effect once per intent."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
