"""Scope functions: who a key belongs to.

A key is unique per scope, and a stored response is only ever replayed inside its own
scope. Scopes are computed after authentication, so ``request.user`` is the real
principal (for DRF, the token- or basic-authenticated user).
"""

from __future__ import annotations

from typing import Any


def by_user(request: Any) -> str:
    """``user:<pk>`` for an authenticated user, ``anonymous`` otherwise.

    All anonymous clients share one scope: keys must be unguessable (UUIDs) there,
    or anonymous requests should be refused or scoped with ``by_user_or_session``.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return "anonymous"


def by_user_or_session(request: Any) -> str:
    """Like ``by_user``, but anonymous visitors are kept apart by their session."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    session = getattr(request, "session", None)
    if session is not None:
        if session.session_key is None:
            session.save()
        return f"session:{session.session_key}"
    return "anonymous"


def global_scope(request: Any) -> str:
    """One scope for everyone: for natural keys that identify the intent by themselves."""
    return "global"
