"""Scope functions: who a key belongs to.

A key is unique per scope, and a stored response is only ever replayed inside its own
scope. Scopes are computed after authentication, so ``request.user`` is the real
principal (for DRF, the token- or basic-authenticated user).

A scope is stored, shown in the admin and sent with every signal, so it must never
hold a bearer credential: a session key or an API token would let whoever reads it
act as its owner. ``by_user_or_session`` therefore stores a keyed hash of the session.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.crypto import salted_hmac

from django_idempotency.keys import Keyed

__all__ = ["by_user", "by_user_or_session", "global_scope", "session_scope"]

#: Marks the hashed form (and its version): a raw session key never contains a colon.
_SESSION_PREFIX = "session:h1:"
_SESSION_SALT = "django_idempotency.scopes.by_user_or_session"


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
    """Like ``by_user``, but anonymous visitors are kept apart by their session.

    The scope is ``session:h1:<HMAC-SHA256 of the session key>``, keyed with
    ``SECRET_KEY``: stable for the session, useless to whoever reads it. During a key
    rotation it is a ``keys.Keyed`` carrying the forms under ``SECRET_KEY_FALLBACKS``.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    session = getattr(request, "session", None)
    if session is not None:
        if session.session_key is None:
            session.save()
        current = session_scope(session.session_key)
        fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", ())
        if fallbacks:
            # The forms under the old keys, so a retry after a rotation finds its record.
            earlier = (session_scope(session.session_key, secret) for secret in fallbacks)
            return Keyed(current, tuple(earlier))
        return current
    return "anonymous"


def session_scope(session_key: str, secret: str | bytes | None = None) -> str:
    """The scope of a guest's session (75 characters), never the session key itself.

    ``secret`` defaults to ``SECRET_KEY``.
    """
    digest = salted_hmac(_SESSION_SALT, session_key, secret, algorithm="sha256").hexdigest()
    return _SESSION_PREFIX + digest


def global_scope(request: Any) -> str:
    """One scope for everyone: for natural keys that identify the intent by themselves."""
    return "global"
