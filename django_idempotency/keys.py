"""Reading the key, computing the scope and fingerprinting the request.

Everything here is about *which intent* a request carries; nothing here touches the
database or builds responses.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from io import BytesIO
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import load_handler
from django.db import models
from django.http import QueryDict
from django.http.multipartparser import MultiPartParser
from django.http.request import RawPostDataException
from django.utils.crypto import salted_hmac
from django.utils.datastructures import MultiValueDict

from django_idempotency.conf import conf

__all__ = [
    "InvalidKey",
    "Keyed",
    "digest",
    "fingerprint",
    "fingerprints",
    "fit_key",
    "fit_scope",
    "parse_key",
    "payload_hash",
]

_FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
_PARSED_FORM = "_idempotency_form"
#: Dedicated to fingerprints, so their HMACs never equal another use's of SECRET_KEY.
_FINGERPRINT_SALT = "django_idempotency.keys.fingerprint"


class InvalidKey(ValueError):
    """The client sent a key we cannot accept; the message says why."""


class Keyed(str):
    """A key or scope keyed by ``SECRET_KEY``, with the forms that records made before a
    key rotation or the upgrade hold (``earlier``).

    Records are found by ``(scope, key)`` equality, so the guard looks for a live record
    under an earlier form, in one query, only when a key or scope function answers one
    of these; it stores only the plain string.
    """

    earlier: tuple[str, ...]

    def __new__(cls, value: str, earlier: tuple[str, ...] = ()) -> Keyed:
        keyed = super().__new__(cls, value)
        keyed.earlier = tuple(form for form in earlier if form != value)
        return keyed


def _column_length(name: str) -> int:
    """The record column's ``max_length``: the model is the one place that states it."""
    from django_idempotency.models import IdempotencyRecord

    field = IdempotencyRecord._meta.get_field(name)
    assert isinstance(field, models.CharField) and field.max_length is not None
    return field.max_length


def __getattr__(name: str) -> int:
    # MAX_KEY_LENGTH and MAX_SCOPE_LENGTH, read from the model when asked for.
    if name in {"MAX_KEY_LENGTH", "MAX_SCOPE_LENGTH"}:
        return _column_length(name[len("MAX_") : -len("_LENGTH")].lower())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fit_key(key: str) -> str:
    """``key`` unchanged if the record's key column holds it as it is; else ``InvalidKey``.

    The one home of the column's rules, for header keys and workers' keys alike:
    1 to ``max_length`` characters; no control characters (PostgreSQL cannot store
    NUL, and the others are never part of an id); no white space at either end (a
    ``PAD SPACE`` collation compares ``"a "`` equal to ``"a"``, and a copied id with a
    stray newline is a bug, not another intent); encodable as UTF-8 (a lone surrogate
    fails in the database driver, which would look like an outage).
    """
    limit = _column_length("key")
    if not key:
        raise InvalidKey("The key is empty.")
    if len(key) > limit:
        raise InvalidKey(f"The key is longer than {limit} characters.")
    if any(unicodedata.category(char) == "Cc" for char in key):
        raise InvalidKey("The key must not contain control characters (NUL, tab, newline, DEL).")
    if key[0].isspace() or key[-1].isspace():
        raise InvalidKey("The key must not begin or end with white space.")
    if not _encodable(key):
        raise InvalidKey("The key is not valid Unicode (it holds a lone surrogate).")
    return key


def fit_scope(value: str) -> str:
    """``value``, or its SHA-256 when the scope column could not hold it as it is.

    A scope is not the client's to choose, so an unfit one is hashed rather than
    refused: too long, ending in a space (a ``PAD SPACE`` collation would compare
    ``"acme "`` equal to ``"acme"``), holding a NUL (PostgreSQL text cannot store it)
    or not encodable as UTF-8.
    """
    if (
        len(value) > _column_length("scope")
        or value.endswith(" ")
        or "\x00" in value
        or not _encodable(value)
    ):
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return value


def _fit_fingerprint(value: str) -> str:
    """``value``, or its SHA-256 when longer than the column: a fingerprint is opaque.

    Never cut: MySQL's ``INSERT IGNORE`` (the claim) would store a too-long value
    truncated, and a retry would then never match its own record.
    """
    if len(value) > _column_length("fingerprint"):
        value = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return value


def fingerprints(value: str) -> tuple[str, tuple[str, ...]]:
    """What the record stores for ``value`` (a fingerprint function's answer), and
    the forms that records made before a key rotation or the upgrade carry.

    The stored form is an HMAC-SHA256 keyed by ``SECRET_KEY``: a plain SHA-256 of a
    low-entropy body (a card number, an amount) could be reversed by brute force from
    a dump of the table. The earlier forms are the HMACs under each of
    ``SECRET_KEY_FALLBACKS``, then the unkeyed form the previous version stored
    (``_fit_fingerprint(value)``), accepted always: matching it writes nothing, and it
    costs nothing for the default fingerprint, which is already 64 characters. One
    HMAC per fallback, over ``value`` computed once: a few microseconds a request.
    """
    fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", ())
    earlier = tuple(_keyed(value, secret) for secret in fallbacks)
    return _fit_fingerprint(_keyed(value)), (*earlier, _fit_fingerprint(value))


def _keyed(value: str, secret: Any = None) -> str:
    data = value.encode("utf-8", "surrogatepass")
    return salted_hmac(_FINGERPRINT_SALT, data, secret, algorithm="sha256").hexdigest()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_key(raw: str | None) -> str | None:
    """Parse a header value as an RFC 9651 String, also accepting a bare token.

    Returns ``None`` when no header was sent. Raises ``InvalidKey`` for anything that
    is not exactly one string of printable ASCII characters that fits the column
    (``fit_key``): empty values, lists (several header lines arrive joined by
    commas), parameters, control or non-ASCII characters.
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
    return fit_key(key)


def sent_key(request: Any) -> str | None:
    """The raw key: the header, else the hidden field of an HTML form (double submits).

    The form is read as ``_parsed_form`` parses it, so a PUT or PATCH form carries its key
    like a POST form does.
    """
    raw = request.META.get(conf.header_meta_key)
    if raw is not None:
        return str(raw)
    parsed = _parsed_form(request)
    if parsed is None:
        return None
    values = parsed[0].getlist(conf.FORM_FIELD)
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
    """The configured scope function's answer, fitted to the column by ``fit_scope``."""
    return scope_forms(request, scope)[0]


def scope_forms(
    request: Any, scope: Callable[[Any], str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """The fitted scope, and its earlier forms if the scope function gave a ``Keyed``."""
    value = (scope or conf.SCOPE)(request)
    return fit_scope(str(value)), tuple(fit_scope(form) for form in earlier_forms(value))


def earlier_forms(value: object) -> tuple[str, ...]:
    """``value.earlier`` for a ``Keyed`` answer, else nothing."""
    return value.earlier if isinstance(value, Keyed) else ()


def route_of(request: Any) -> str:
    """The request's path; two URLs of one route (``/orders/1/pay``, ``/orders/2/pay``) differ."""
    return str(getattr(request, "path_info", "") or getattr(request, "path", ""))


def fingerprint(request: Any) -> str:
    """sha256 over canonical JSON of method, path, query and parsed body.

    JSON bodies are re-serialised with sorted keys, so key order and white space do
    not matter; form bodies are compared as sorted fields; anything else as bytes.
    This is the unkeyed digest; the record stores its HMAC (``fingerprints``).
    """
    query = sorted(request.GET.lists()) if hasattr(request, "GET") else []
    material = {
        "method": request.method,
        "route": route_of(request),
        "query": query,
        "body": _canonical_body(request),
    }
    return digest(material)


def digest(material: Any) -> str:
    """SHA-256 of ``material`` as canonical JSON (sorted keys, compact), for fingerprints.

    Canonical, so two equal payloads in another key order or spacing give one digest.
    """
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _canonical_body(request: Any) -> Any:
    """The body as the view will see it, the same for every method.

    Django parses forms into ``request.POST`` for POST only; ``_parsed_form`` parses a
    PUT, PATCH or DELETE form the same way, so its fields and files count there too.
    """
    django_request = getattr(request, "_request", request)  # DRF wraps the HttpRequest
    content_type = _content_type(django_request)
    if content_type in _FORM_CONTENT_TYPES:
        try:
            parsed = _parsed_form(request)
        except ValueError:
            parsed = None  # not a form after all: compare bytes
        if parsed is not None:
            fields, files = parsed
            material: dict[str, Any] = {"form": sorted(fields.lists())}
            if content_type == "multipart/form-data":
                material["files"] = _file_digests(files)
            return material
    body = _raw_body(request)
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
        except (ValueError, RecursionError):
            pass  # not JSON after all, or nested too deep to re-serialise: compare bytes
        else:
            return {"json": hashlib.sha256(canonical.encode()).hexdigest()}
    return {"bytes": hashlib.sha256(body).hexdigest()}


def _parsed_form(request: Any) -> tuple[QueryDict, MultiValueDict[str, Any]] | None:
    """A form request's fields and files, for any method; ``None`` for other bodies.

    A POST form is Django's own ``request.POST`` and ``request.FILES``. Any other
    method's form is parsed from ``request.body`` (a copy in memory), so the view can
    still read the body or the stream afterwards; the parse is kept on the request
    so the key and the fingerprint share it.
    """
    django_request = getattr(request, "_request", request)  # DRF wraps the HttpRequest
    content_type = _content_type(django_request)
    if content_type not in _FORM_CONTENT_TYPES:
        return None
    if django_request.method == "POST":
        return django_request.POST, django_request.FILES
    parsed: tuple[QueryDict, MultiValueDict[str, Any]] | None = getattr(
        django_request, _PARSED_FORM, None
    )
    if parsed is None:
        parsed = _parse_form(request, django_request, content_type)
        setattr(django_request, _PARSED_FORM, parsed)
    return parsed


def _parse_form(
    request: Any, django_request: Any, content_type: str
) -> tuple[QueryDict, MultiValueDict[str, Any]]:
    try:
        body = bytes(django_request.body)
    except RawPostDataException:
        # A DRF parser already read the stream; its parse is what the view sees.
        return request.POST, request.FILES
    if content_type == "application/x-www-form-urlencoded":
        # As Django parses a POST form: always UTF-8 (RFC 1866).
        return QueryDict(body, encoding="utf-8"), MultiValueDict()
    meta = {**django_request.META, "CONTENT_LENGTH": str(len(body))}
    handlers = [load_handler(path, django_request) for path in settings.FILE_UPLOAD_HANDLERS]
    fields, files = MultiPartParser(meta, BytesIO(body), handlers, django_request.encoding).parse()
    return fields, files


def _content_type(django_request: Any) -> str:
    return (getattr(django_request, "content_type", "") or "").lower()


def _raw_body(request: Any) -> bytes:
    django_request = getattr(request, "_request", request)  # DRF wraps the HttpRequest
    try:
        return bytes(django_request.body)
    except RequestDataTooBig:
        raise
    except Exception:  # RawPostDataException: a DRF parser already consumed the stream
        data = getattr(request, "data", None)
        return json.dumps(_plain(data), sort_keys=True, default=str).encode()


def _file_digests(files: MultiValueDict[str, Any]) -> list[list[str]]:
    digests = []
    for name, uploads in sorted(files.lists()):
        for upload in uploads:
            sha = hashlib.sha256()
            for chunk in upload.chunks():
                sha.update(chunk)
            upload.seek(0)
            digests.append([name, upload.name, sha.hexdigest()])
    return digests


def _plain(data: Any) -> Any:
    if hasattr(data, "lists"):
        return sorted(data.lists())
    return data


def payload_hash(request: Any) -> str:
    """A key derived from the payload alone: for webhooks and jobs that carry no key.

    Unkeyed, unlike the fingerprint, on purpose: the key is what the unique index
    deduplicates on, so it must be the same on every server and under every secret. A
    key keyed by ``SECRET_KEY`` would make two records of one redelivery during a
    rolling deploy or right after a rotation, and both would run.
    """
    return "payload:" + digest({"route": route_of(request), "body": _canonical_body(request)})
