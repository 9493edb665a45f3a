"""drf-spectacular integration: guarded operations document their headers and answers.

Importing this module registers view extensions (for ``IdempotentMixin`` and
``ConditionalUpdateMixin`` views, and for ``@api_view`` functions wrapped around an
``@idempotent`` one; the app imports it when drf-spectacular is installed). They swap
the view's schema class for a subclass that, after the normal inspection, adds to each
guarded operation:

- the ``Idempotency-Key`` header parameter (``required`` per the view's
  ``idempotency_required`` or ``IDEMPOTENCY["REQUIRED"]``, with a ``pattern`` that is
  exactly the bare keys the guard accepts; omitted when the view derives its key
  itself); every answer the guard itself sends: ``303`` (a completed operation whose
  response was not stored), ``400``, ``409``, ``413``, ``422`` and ``503``, with their
  ``Retry-After`` / ``Location`` headers; the ``Idempotent-Replayed`` response header;
- for conditional updates, the ``If-Match`` header, the ``412`` / ``428`` (and ``400``)
  problem responses, and the ``ETag`` response header on reads and writes.

Problems share one ``IdempotencyProblem`` schema (RFC 9457). The view's own responses
are kept: a ``400`` gets the problem as a second media type next to DRF's validation
body. Schemas set later by ``@extend_schema`` / ``@extend_schema_view`` (which
drf-spectacular puts on the original view, not on the replacement) are wrapped the
same way when they are set on the view. Nothing here runs at request time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.plumbing import ResolvedComponent, get_doc
from drf_spectacular.settings import spectacular_settings
from rest_framework.schemas.inspectors import ViewInspector
from rest_framework.views import APIView

from django_idempotency import keys
from django_idempotency.conf import conf
from django_idempotency.drf import ConditionalUpdateMixin, IdempotentMixin
from django_idempotency.guard import Guard
from django_idempotency.responses import REPLAYED_HEADER

PROBLEM_MEDIA_TYPE = "application/problem+json"
# What keys.parse_key accepts unquoted: printable ASCII without "," and ";" (a list,
# parameters), not starting with '"' (that starts the quoted sf-string form).
KEY_PATTERN = r"^[\x21\x23-\x2B\x2D-\x3A\x3C-\x7E][\x21-\x2B\x2D-\x3A\x3C-\x7E]*$"
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "An RFC 9457 problem detail.",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "operation": {
            "type": "string",
            "nullable": True,
            "description": "The status URL of the operation holding the key (303, 409).",
        },
        "response_status": {
            "type": "integer",
            "description": "The status of the completed operation's response (303).",
        },
        "etag": {"type": "string", "description": "The current ETag (412)."},
    },
    "required": ["type", "title", "status", "detail"],
}
# DRF renders its own errors (validation, parse errors) as a dict, or as a list when a
# view raises ValidationError with a message or a list serializer fails.
DRF_ERROR_SCHEMA = {
    "description": "Django REST framework's error body.",
    "anyOf": [
        {"type": "object", "additionalProperties": {}},
        {"type": "array", "items": {}},
    ],
}
RETRY_AFTER = {
    "schema": {"type": "integer", "minimum": 1},
    "required": True,
    "description": "Seconds to wait before retrying with the same key.",
}
REPLAYED = {
    "schema": {"type": "string", "enum": ["true"]},
    "description": "Present on the stored response of an earlier request with the same key.",
}
EXPIRES = {
    "schema": {"type": "string"},
    "description": "An HTTP-date: until then the Idempotency-Key is remembered, and a retry "
    "with it gets this answer instead of running the operation again.",
}


def etag_header(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string"}, "description": description}


@dataclass(frozen=True)
class Answer:
    """One documented response of the guard: why it is sent, and its headers."""

    description: str
    headers: dict[str, dict[str, Any]]


IDEMPOTENCY_PROBLEMS = {
    "303": Answer(
        "An earlier request with this Idempotency-Key completed, but its response was not "
        "stored (see MAX_RESPONSE_BYTES), so it cannot be replayed: see Location.",
        {
            "Location": {
                "schema": {"type": "string"},
                "description": "The first response's Location, else the operation's status URL.",
            },
            REPLAYED_HEADER: {**REPLAYED, "required": True},
        },
    ),
    "400": Answer("The Idempotency-Key is missing (where required) or malformed.", {}),
    "409": Answer(
        "A request with this Idempotency-Key is still in progress, or a concurrent one held "
        "a lock this request needed. Retry with the same key after Retry-After seconds.",
        {"Retry-After": RETRY_AFTER, "Idempotency-Expires": EXPIRES},
    ),
    "413": Answer(
        "The request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE, so it cannot be "
        "compared with a retry's; nothing was done.",
        {},
    ),
    "422": Answer(
        "This Idempotency-Key was already used with a different request.",
        {"Idempotency-Expires": EXPIRES},
    ),
    "503": Answer(
        "The idempotency store is unavailable; nothing was done. Retry with the same key "
        "after Retry-After seconds.",
        {"Retry-After": RETRY_AFTER},
    ),
}
DERIVED_KEY_INVALID = Answer(
    "The key derived from this request is not 1-255 printable ASCII characters.", {}
)
CONDITIONAL_PROBLEMS = {
    "400": Answer("The If-Match header is malformed.", {}),
    "412": Answer(
        "The resource has changed since the ETag in If-Match was read; the current ETag "
        "is in the ETag header. Fetch it again, reapply the change and retry.",
        {"ETag": etag_header("The current entity tag.")},
    ),
}
PRECONDITION_REQUIRED = {
    "428": Answer("If-Match is required: send the ETag from your last read of the resource.", {}),
}


@dataclass(frozen=True)
class KeyContract:
    """How one guarded operation reads its key."""

    from_header: bool
    required: bool


class GuardedSchemaMixin:
    """Mixed into the view's own AutoSchema class; adds to what it found."""

    view: Any
    path_regex: str

    def __set__(self, instance: Any, other: Any) -> None:
        # drf-spectacular sets the @extend_schema schema on the view instance after it
        # built it from the replacement class: that schema must document the guard too.
        if isinstance(other, ViewInspector):
            schema_class = guarded_schema_class(other.__class__)
            if schema_class is not other.__class__:
                other = schema_class()
        super().__set__(instance, other)  # type: ignore[misc]

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(  # type: ignore[misc]
            path, path_regex, path_prefix, method, registry
        )
        if operation is None:
            return None
        method = method.upper()
        contract = self._key_contract(method)
        if contract is not None:
            self._document_idempotency(operation, registry, contract)
        if isinstance(self.view, ConditionalUpdateMixin) and self._is_detail():
            if method in {m.upper() for m in self.view.conditional_methods}:
                self._document_precondition(operation, registry)
            elif method in ("GET", "HEAD"):
                _add_header(operation, "ETag", etag_header("The resource's current entity tag."))
        return operation

    def get_description(self) -> str:
        """The view's own docstring, never one of our mixins' (they document Python)."""
        description: str = super().get_description()  # type: ignore[misc]
        ours = (IdempotentMixin, ConditionalUpdateMixin)
        if description not in {get_doc(mixin) for mixin in ours}:
            return description
        excluded = tuple(spectacular_settings.GET_LIB_DOC_EXCLUDES())
        for cls in type(self.view).__mro__:
            if cls in excluded:
                break
            if cls not in ours and cls.__doc__:
                return str(get_doc(cls))
        return ""

    def _key_contract(self, method: str) -> KeyContract | None:
        guard = self._decorator_guard(method)
        if guard is not None:
            if not guard.applies(SimpleNamespace(method=method)):
                return None
            return KeyContract(
                from_header=guard.key is None,
                required=conf.REQUIRED if guard.required is None else bool(guard.required),
            )
        view = self.view
        if not isinstance(view, IdempotentMixin) or not self._is_idempotent(method):
            return None
        required = view.idempotency_required
        return KeyContract(
            from_header=type(view).get_idempotency_key is IdempotentMixin.get_idempotency_key,
            required=conf.REQUIRED if required is None else bool(required),
        )

    def _decorator_guard(self, method: str) -> Guard | None:
        """The ``@idempotent`` guard of a function view, above or below ``@api_view``."""
        view = self.view
        if isinstance(view, IdempotentMixin):  # above: the mixin runs the decorator's guard
            guard = getattr(view, "_decorator_guard", None)
            return guard if isinstance(guard, Guard) else None
        return handler_guard(getattr(type(view), method.lower(), None))

    def _is_idempotent(self, method: str) -> bool:
        if method not in conf.METHODS:
            return False
        try:
            return bool(self.view.is_idempotent_request(SimpleNamespace(method=method)))
        except Exception:  # a custom check that needs a real request
            return True

    def _is_detail(self) -> bool:
        view = self.view
        lookup = re.escape(
            str(getattr(view, "lookup_url_kwarg", None) or getattr(view, "lookup_field", "pk"))
        )
        # A regex route names it (?P<pk>...), a path() route <pk> or <int:pk>.
        pattern = rf"\(\?P<{lookup}>|<(?:\w+:)?{lookup}>"
        return re.search(pattern, self.path_regex) is not None

    def _document_idempotency(
        self, operation: dict[str, Any], registry: Any, contract: KeyContract
    ) -> None:
        problems = dict(IDEMPOTENCY_PROBLEMS)
        if contract.from_header:
            _add_parameter(
                operation,
                {
                    "in": "header",
                    "name": conf.HEADER,
                    "required": contract.required,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": keys.MAX_KEY_LENGTH,
                        "pattern": KEY_PATTERN,
                    },
                    "description": "A unique key (a UUID) for this intent; send the same key "
                    "when you retry, and the first response is replayed instead of the "
                    "operation running again. 1-255 printable ASCII characters without "
                    '`,` and `;`, not starting with `"` (an RFC 9651 quoted string of the '
                    "same characters is accepted too).",
                },
            )
        else:
            problems["400"] = DERIVED_KEY_INVALID
        self._add_problems(operation, registry, problems)
        _add_header(operation, REPLAYED_HEADER, REPLAYED)
        _add_header(operation, "Idempotency-Expires", EXPIRES)

    def _document_precondition(self, operation: dict[str, Any], registry: Any) -> None:
        required = bool(self.view.precondition_required)
        _add_parameter(
            operation,
            {
                "in": "header",
                "name": "If-Match",
                "required": required,
                "schema": {"type": "string"},
                "description": "The ETag from your last read of the resource "
                '(strong comparison; "*" matches any current version).',
            },
        )
        problems = dict(CONDITIONAL_PROBLEMS)
        if required:
            problems.update(PRECONDITION_REQUIRED)
        self._add_problems(operation, registry, problems)
        _add_header(operation, "ETag", etag_header("The resource's new entity tag."))

    def _add_problems(
        self, operation: dict[str, Any], registry: Any, problems: dict[str, Answer]
    ) -> None:
        component = ResolvedComponent(  # type: ignore[no-untyped-call]
            name="IdempotencyProblem",
            type=ResolvedComponent.SCHEMA,
            object="IdempotencyProblem",
            schema=PROBLEM_SCHEMA,
        )
        registry.register_on_missing(component)
        responses = operation.setdefault("responses", {})
        for status, answer in problems.items():
            response = responses.get(status)
            if response is None:
                responses[status] = response = {"description": answer.description}
            elif answer.description not in response.get("description", ""):
                description = f"{response.get('description', '')} {answer.description}"
                response["description"] = description.strip()
            content = response.setdefault("content", {})
            if status == "400" and not any(media != PROBLEM_MEDIA_TYPE for media in content):
                # DRF answers its own 400s (validation, parse errors) in the view's media types.
                for media_type in self._error_media_types():
                    content.setdefault(media_type, {"schema": DRF_ERROR_SCHEMA})
            content.setdefault(PROBLEM_MEDIA_TYPE, {"schema": component.ref})
            for name, header in answer.headers.items():
                response.setdefault("headers", {}).setdefault(name, dict(header))

    def _error_media_types(self) -> list[str]:
        try:
            media_types: list[str] = self.map_renderers("media_type")  # type: ignore[attr-defined]
        except Exception:  # a view whose renderers cannot be listed without a request
            media_types = []
        return [m for m in media_types if m != PROBLEM_MEDIA_TYPE] or ["application/json"]


def _add_parameter(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(
        p.get("in") == "header" and p.get("name", "").lower() == parameter["name"].lower()
        for p in parameters
    ):
        parameters.append(parameter)


def _add_header(operation: dict[str, Any], name: str, header: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        if str(status).startswith("2"):
            response.setdefault("headers", {}).setdefault(name, dict(header))


def handler_guard(handler: Any) -> Guard | None:
    """The ``Guard`` of an ``@idempotent`` function behind a DRF handler, if any.

    ``@api_view`` above ``@idempotent`` makes a handler that calls the guarded function
    from its closure; drf-spectacular's own wrappers keep the original as ``__wrapped__``.
    """
    pending: list[tuple[Any, int]] = [(handler, 0)]
    while pending:
        candidate, depth = pending.pop()
        if candidate is None or depth > MAX_UNWRAP:
            continue
        guard = getattr(candidate, "idempotency_guard", None)
        if isinstance(guard, Guard):
            return guard
        inner = [getattr(candidate, "__wrapped__", None), getattr(candidate, "__func__", None)]
        for cell in getattr(candidate, "__closure__", None) or ():
            try:
                inner.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        pending.extend((f, depth + 1) for f in inner if callable(f) and not isinstance(f, type))
    return None


MAX_UNWRAP = 4


_GUARDED_CLASSES: dict[type[Any], type[Any]] = {}


def guarded_schema_class(schema_class: type[Any]) -> type[Any]:
    """The schema class with ``GuardedSchemaMixin`` in front; one per schema class."""
    if issubclass(schema_class, GuardedSchemaMixin):
        return schema_class
    guarded = _GUARDED_CLASSES.get(schema_class)
    if guarded is None:
        name = f"Guarded{schema_class.__name__}"
        guarded = _GUARDED_CLASSES[schema_class] = type(
            name, (GuardedSchemaMixin, schema_class), {}
        )
    return guarded


class _GuardedViewExtension(OpenApiViewExtension):  # type: ignore[no-untyped-call]
    match_subclasses = True

    def view_replacement(self) -> Any:
        view = self.target
        schema_class = guarded_schema_class(type(view.schema))
        return type(view.__name__, (view,), {"schema": schema_class()})


class IdempotentViewExtension(_GuardedViewExtension):  # type: ignore[no-untyped-call]
    target_class = "django_idempotency.drf.IdempotentMixin"


class ConditionalUpdateViewExtension(_GuardedViewExtension):  # type: ignore[no-untyped-call]
    target_class = "django_idempotency.drf.ConditionalUpdateMixin"


class IdempotentFunctionViewExtension(_GuardedViewExtension):  # type: ignore[no-untyped-call]
    """``@api_view`` over ``@idempotent``: a plain ``APIView`` whose handler is guarded."""

    target_class = "rest_framework.views.APIView"
    priority = -1  # a project's own extension for the same view wins

    @classmethod
    def _matches(cls, target: Any) -> bool:
        if not (isinstance(target, type) and issubclass(target, APIView)):
            return False
        if issubclass(target, (IdempotentMixin, ConditionalUpdateMixin)):
            return False
        return any(
            handler_guard(getattr(target, name, None)) is not None
            for name in target.http_method_names
        )
