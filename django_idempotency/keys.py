"""Reading the key, computing the scope and fingerprinting the request.

Everything here is about *which intent* a request carries; nothing here touches the
database or builds responses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig

from django_idempotency.conf import conf

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255
FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


class InvalidKey(ValueError):
    """The client sent a key we cannot accept; the message says why."""


def parse_key(raw: str | None) -> str | None:
    """Parse a header value as an RFC 9651 String, also accepting a bare token.

    Returns ``None`` when no header was sent. Raises ``InvalidKey`` for anything that
    is not exactly one string of 1-255 printable ASCII characters: empty values,
    lists (several header lines arrive joined by commas), parameters, control or
    non-ASCII characters.
    """
    if raw is None:
        return None
    value = raw.strip(" \t")
    if not value:
        raise InvalidKey("The key is empty.")
    if value.startswith('"'):
        key = _parse_sf_string(value)
    else:
        if "," in value:
            raise InvalidKey("Send exactly one key, not a list.")
        if ";" in value:
            raise InvalidKey("The key must not carry parameters.")
        if any(not ("\x21" <= char <= "\x7e") for char in value):
            raise InvalidKey("The key may contain printable ASCII characters only.")
        key = value
    if not key:
        raise InvalidKey("The key is empty.")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"The key is longer than {MAX_KEY_LENGTH} characters.")
    return key


def sent_key(request: Any) -> str | None:
    """The raw key: the header, else the hidden field of an HTML form (double submits)."""
    raw = request.META.get(conf.header_meta_key)
    if raw is not None:
        return str(raw)
    content_type = (getattr(request, "content_type", "") or "").lower()
    if content_type in FORM_CONTENT_TYPES:
        values = request.POST.getlist(conf.FORM_FIELD)
        if len(values) > 1:
            return ", ".join(values)  # rejected as a list
        if values:
            return str(values[0])
    return None


def _parse_sf_string(value: str) -> str:
    chars: list[str] = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == "\\":
            index += 1
            if index >= len(value) or value[index] not in '"\\':
                raise InvalidKey("The key has an invalid escape sequence.")
            chars.append(value[index])
        elif char == '"':
            rest = value[index + 1 :].strip(" \t")
            if rest.startswith(","):
                raise InvalidKey("Send exactly one key, not a list.")
            if rest:
                raise InvalidKey("The key must be a single string without parameters.")
            return "".join(chars)
        elif not ("\x21" <= char <= "\x7e"):
            # Stricter than an sf-string: a quoted key obeys the same charset as a bare
            # one, so '"a b"' is refused like 'a b' and '"   "' is not a key.
            raise InvalidKey("The key may contain printable ASCII characters only, no spaces.")
        else:
            chars.append(char)
        index += 1
    raise InvalidKey("The key's closing quote is missing.")


def compute_scope(request: Any, scope: Callable[[Any], str] | None = None) -> str:
    """The configured scope function's answer, hashed when too long for the column.

    Also hashed when it ends in a space (a ``PAD SPACE`` collation would compare
    ``"acme "`` equal to ``"acme"``) or holds a NUL (PostgreSQL text cannot store it).
    """
    value = str((scope or conf.SCOPE)(request))
    if len(value) > MAX_SCOPE_LENGTH or value.endswith(" ") or "\x00" in value:
        value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value


def route_of(request: Any) -> str:
    """The request's path; two URLs of one route (``/orders/1/pay``, ``/orders/2/pay``) differ."""
    return str(getattr(request, "path_info", "") or getattr(request, "path", ""))


def fingerprint(request: Any) -> str:
    """sha256 over canonical JSON of method, path, query and parsed body.

    JSON bodies are re-serialised with sorted keys, so key order and white space do
    not matter; form bodies are compared as sorted fields; anything else as bytes.
    """
    query = sorted(request.GET.lists()) if hasattr(request, "GET") else []
    material = {
        "method": request.method,
        "route": route_of(request),
        "query": query,
        "body": canonical_body(request),
    }
    return digest(material)


def digest(material: Any) -> str:
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def canonical_body(request: Any) -> Any:
    django_request = getattr(request, "_request", request)  # DRF wraps the HttpRequest
    content_type = (getattr(django_request, "content_type", "") or "").lower()
    if content_type == "multipart/form-data":
        return _multipart(django_request)
    body = _raw_body(request)
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
        except (ValueError, RecursionError):
            pass  # not JSON after all, or nested too deep to re-serialise: compare bytes
        else:
            return {"json": hashlib.sha256(canonical.encode()).hexdigest()}
    elif content_type == "application/x-www-form-urlencoded":
        try:
            return {"form": sorted(django_request.POST.lists())}
        except (ValueError, RequestDataTooBig):
            pass
    return {"bytes": hashlib.sha256(body).hexdigest()}


def _raw_body(request: Any) -> bytes:
    django_request = getattr(request, "_request", request)  # DRF wraps the HttpRequest
    try:
        return bytes(django_request.body)
    except RequestDataTooBig:
        raise
    except Exception:  # RawPostDataException: a DRF parser already consumed the stream
        data = getattr(request, "data", None)
        return json.dumps(_plain(data), sort_keys=True, default=str).encode()


def _multipart(request: Any) -> Any:
    fields = sorted(request.POST.lists())
    files = []
    for name, uploads in sorted(request.FILES.lists()):
        for upload in uploads:
            sha = hashlib.sha256()
            for chunk in upload.chunks():
                sha.update(chunk)
            upload.seek(0)
            files.append([name, upload.name, sha.hexdigest()])
    return {"form": fields, "files": files}


def _plain(data: Any) -> Any:
    if hasattr(data, "lists"):
        return sorted(data.lists())
    return data


def payload_hash(request: Any) -> str:
    """A key derived from the payload alone: for webhooks and jobs that carry no key."""
    return "payload:" + digest({"route": route_of(request), "body": canonical_body(request)})
