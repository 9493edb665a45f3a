"""Stored responses encrypted at rest, opt-in: Fernet keys in ``IDEMPOTENCY["ENCRYPTION_KEYS"]``.

A stored response can hold what the view answered a client: personal data, a one-time
secret. With keys set, the body and the stored headers are written as Fernet tokens
(AES-128-CBC with an HMAC-SHA256, from the ``cryptography`` package: the ``encryption``
extra) under the first key; every key in the list still decrypts, so keys rotate by
putting a new one first and re-encrypting with ``reencrypt_idempotency_records``.

The marker is in ``response_headers``: an encrypted record's headers are exactly
``{":key": <key id>, ":headers": <token>}``. No stored header can carry a name that
starts with ``:`` (it is not an HTTP token), so a plaintext record written before
encryption was turned on is never taken for an encrypted one and replays as it is,
while an encrypted one whose key is gone raises ``CannotDecrypt`` instead of replaying
ciphertext. ``response_status`` stays in the clear: the status endpoint reports it.

``cryptography`` is imported only when keys are set, so the package works without it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_idempotency.conf import conf
from django_idempotency.operation import Stored

__all__ = ["CannotDecrypt", "is_encrypted", "key_id", "seal", "unseal"]

KEY = ":key"
HEADERS = ":headers"
_ID_CONTEXT = b"django-idempotency encryption key id\x00"
MISSING_PACKAGE = (
    "IDEMPOTENCY['ENCRYPTION_KEYS'] is set, but the 'cryptography' package is not "
    "installed: pip install 'django-idempotency[encryption]'."
)


class CannotDecrypt(Exception):
    """An encrypted record that none of the configured keys opens: replaying it is impossible."""


def raw_key(key: Any) -> bytes | None:
    """The 32 bytes of a Fernet key (URL-safe base64, str or bytes), or ``None``."""
    if isinstance(key, str):
        key = key.encode("ascii", "replace")
    if not isinstance(key, bytes):
        return None
    try:
        raw = base64.urlsafe_b64decode(key)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32 or base64.urlsafe_b64encode(raw) != key.strip():
        return None
    return raw


def key_id(key: str | bytes) -> str:
    """A short public name for a key, stored beside its ciphertext so that the records
    not yet under the newest key can be selected in SQL. A keyed hash of the key: it
    tells nothing about the key itself."""
    raw = raw_key(key)
    if raw is None:
        raise ImproperlyConfigured("IDEMPOTENCY['ENCRYPTION_KEYS'] holds a malformed Fernet key.")
    return hashlib.sha256(_ID_CONTEXT + raw).hexdigest()[:16]


@dataclass(frozen=True)
class _Keys:
    newest_id: str
    encrypter: Any  # Fernet under the newest key
    decrypter: Any  # MultiFernet over every key, newest first


def _configured() -> tuple[bytes, ...]:
    keys = conf.ENCRYPTION_KEYS
    return tuple(key.encode("ascii") if isinstance(key, str) else bytes(key) for key in keys)


@functools.lru_cache(maxsize=8)
def _keys_for(keys: tuple[bytes, ...]) -> _Keys:
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError as exc:
        raise ImproperlyConfigured(MISSING_PACKAGE) from exc
    fernets = [Fernet(key) for key in keys]
    return _Keys(key_id(keys[0]), fernets[0], MultiFernet(fernets))


def _keys() -> _Keys | None:
    keys = _configured()
    return _keys_for(keys) if keys else None


def newest_key_id() -> str | None:
    keys = _keys()
    return None if keys is None else keys.newest_id


def is_encrypted(headers: Mapping[str, Any] | None) -> bool:
    return headers is not None and KEY in headers


def seal(stored: Stored) -> Stored:
    """``stored`` encrypted under the newest key; unchanged when encryption is off."""
    keys = _keys()
    if keys is None:
        return stored
    return _sealed(keys, stored.status, stored.headers, stored.body)


def _sealed(keys: _Keys, status: int, headers: Mapping[str, str], body: bytes | None) -> Stored:
    text = json.dumps(dict(headers), separators=(",", ":"), ensure_ascii=False)
    sealed_headers = {
        KEY: keys.newest_id,
        HEADERS: keys.encrypter.encrypt(text.encode("utf-8")).decode("ascii"),
    }
    sealed_body = None if body is None else bytes(keys.encrypter.encrypt(bytes(body)))
    return Stored(status=status, headers=sealed_headers, body=sealed_body)


def unseal(headers: Mapping[str, Any] | None, body: Any) -> tuple[dict[str, str], bytes | None]:
    """The plaintext headers and body of a record as stored (encrypted or not).

    Raises ``CannotDecrypt`` for an encrypted record that no configured key opens (its
    key was removed, encryption was turned off, or the token was altered).
    """
    plain_body = None if body is None else bytes(body)
    if not is_encrypted(headers):
        return dict(headers or {}), plain_body
    assert headers is not None
    try:
        keys = _keys()
    except ImproperlyConfigured as exc:
        raise CannotDecrypt(str(exc)) from exc
    if keys is None:
        raise CannotDecrypt(
            f"the record is encrypted (key id {headers.get(KEY)!r}) but "
            "IDEMPOTENCY['ENCRYPTION_KEYS'] is empty"
        )
    from cryptography.fernet import InvalidToken

    try:
        text = keys.decrypter.decrypt(str(headers.get(HEADERS, "")).encode("ascii"))
        opened = None if plain_body is None else bytes(keys.decrypter.decrypt(plain_body))
    except (InvalidToken, UnicodeEncodeError) as exc:
        raise CannotDecrypt(
            f"no key in IDEMPOTENCY['ENCRYPTION_KEYS'] decrypts the record (key id "
            f"{headers.get(KEY)!r})"
        ) from exc
    decoded = json.loads(text.decode("utf-8"))
    return {str(name): str(value) for name, value in decoded.items()}, opened


def reseal(
    status: int, headers: Mapping[str, Any] | None, body: Any
) -> tuple[dict[str, str], bytes | None] | None:
    """The record's response under the newest key, or ``None`` if it already is there.

    Plaintext records are encrypted too. Raises ``CannotDecrypt`` like ``unseal``.
    """
    keys = _keys()
    if keys is None:
        raise ImproperlyConfigured(
            "IDEMPOTENCY['ENCRYPTION_KEYS'] is empty: nothing to encrypt under."
        )
    if is_encrypted(headers) and headers is not None and headers.get(KEY) == keys.newest_id:
        return None
    plain_headers, plain_body = unseal(headers, body)
    sealed = _sealed(keys, status, plain_headers, plain_body)
    return sealed.headers, sealed.body


def malformed_keys(value: Any) -> str | None:
    """Why ``value`` is not a usable ``ENCRYPTION_KEYS``, or ``None`` (for the checks)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return f"must be a list of Fernet keys, newest first, not {type(value).__name__}"
    bad = [index for index, key in enumerate(value) if raw_key(key) is None]
    if bad:
        where = ", ".join(str(index) for index in bad)
        return f"has malformed Fernet keys at position {where}"
    raws = [raw_key(key) for key in value]
    if len(set(raws)) != len(raws):
        return "lists the same key twice"
    return None


def package_missing() -> bool:
    try:
        import cryptography.fernet  # noqa: F401
    except ImportError:
        return True
    return False
