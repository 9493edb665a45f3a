"""Retries that are boring: run a Django view's side effect once per intent.

Public modules, each with its ``__all__`` (docs/reference/api.md): ``decorators``,
``drf``, ``guard``, ``operation``, ``responses``, ``models``, ``keys``, ``scopes``,
``once``, ``celery``, ``conditional``, ``conf``, ``signals`` and ``urls``. Every other
module, and every name outside an ``__all__``, is internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"
