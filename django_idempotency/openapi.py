"""drf-spectacular integration: guarded operations document their headers and problems.

Importing this module registers two view extensions (for ``IdempotentMixin`` and
``ConditionalUpdateMixin`` views; the app imports it when drf-spectacular is
installed). They swap the view's schema class for a subclass that, after the normal
inspection, adds to each guarded operation:

- the ``Idempotency-Key`` header parameter (``required`` per the view's
  ``idempotency_required`` or ``IDEMPOTENCY["REQUIRED"]``; omitted when the view
  derives its key itself), the ``400`` / ``409`` / ``422`` problem responses and the
  ``Idempotent-Replayed`` response header;
- for conditional updates, the ``If-Match`` header, the ``412`` / ``428`` (and ``400``)
  problem responses, and the ``ETag`` response header on reads and writes.

Problems share one ``IdempotencyProblem`` schema (RFC 9457). Nothing here runs at
request time.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.plumbing import ResolvedComponent, get_doc
from drf_spectacular.settings import spectacular_settings

from django_idempotency.conf import conf
from django_idempotency.drf import ConditionalUpdateMixin, IdempotentMixin

PROBLEM_MEDIA_TYPE = "application/problem+json"
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
            "description": "The status URL of the operation holding the key (409).",
        },
        "etag": {"type": "string", "description": "The current ETag (412)."},
    },
    "required": ["type", "title", "status", "detail"],
}
IDEMPOTENCY_PROBLEMS = {
    "400": "The Idempotency-Key is missing (where required) or malformed.",
    "409": "A request with this Idempotency-Key is still in progress, or a concurrent one "
    "holds its lock; nothing was done. Retry with the same key after Retry-After seconds.",
    "422": "This Idempotency-Key was already used with a different request.",
}
CONDITIONAL_PROBLEMS = {
    "400": "The If-Match header is malformed.",
    "412": "The resource has changed since the ETag in If-Match was read; the current ETag "
    "is in the ETag header. Fetch it again, reapply the change and retry.",
}
PRECONDITION_REQUIRED = {
    "428": "If-Match is required: send the ETag from your last read of the resource.",
}
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class GuardedSchemaMixin:
    """Mixed into the view's own AutoSchema class; adds to what it found."""

    view: Any
    path_regex: str

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(  # type: ignore[misc]
            path, path_regex, path_prefix, method, registry
        )
        if operation is None:
            return None
        method = method.upper()
        if isinstance(self.view, IdempotentMixin) and self._is_idempotent(method):
            self._document_idempotency(operation, registry)
        if isinstance(self.view, ConditionalUpdateMixin) and self._is_detail():
            if method in {m.upper() for m in self.view.conditional_methods}:
                self._document_precondition(operation, registry)
            elif method in ("GET", "HEAD"):
                _add_header(operation, "ETag", "The resource's current entity tag.", ok=True)
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

    def _document_idempotency(self, operation: dict[str, Any], registry: Any) -> None:
        view = self.view
        header_keyed = type(view).get_idempotency_key is IdempotentMixin.get_idempotency_key
        problems = dict(IDEMPOTENCY_PROBLEMS)
        if header_keyed:
            required = view.idempotency_required
            _add_parameter(
                operation,
                {
                    "in": "header",
                    "name": conf.HEADER,
                    "required": conf.REQUIRED if required is None else bool(required),
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "A unique key (a UUID) for this intent; send the same key "
                    "when you retry, and the first response is replayed instead of the "
                    "operation running again.",
                },
            )
        else:
            del problems["400"]
        _add_problems(operation, registry, problems)
        _add_header(
            operation,
            "Idempotent-Replayed",
            '"true" when this is the stored response of an earlier request with the same key.',
            ok=True,
        )

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
        _add_problems(operation, registry, problems)
        _add_header(operation, "ETag", "The resource's new entity tag.", ok=True)


def _add_parameter(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(
        p.get("in") == "header" and p.get("name", "").lower() == parameter["name"].lower()
        for p in parameters
    ):
        parameters.append(parameter)


def _add_problems(operation: dict[str, Any], registry: Any, problems: dict[str, str]) -> None:
    component = ResolvedComponent(  # type: ignore[no-untyped-call]
        name="IdempotencyProblem",
        type=ResolvedComponent.SCHEMA,
        object="IdempotencyProblem",
        schema=PROBLEM_SCHEMA,
    )
    registry.register_on_missing(component)
    responses = operation.setdefault("responses", {})
    for status, description in problems.items():
        response = responses.get(status)
        if response is None:
            responses[status] = response = {"description": description}
        elif description not in response.get("description", ""):
            response["description"] = f"{response.get('description', '')} {description}".strip()
        response.setdefault("content", {}).setdefault(PROBLEM_MEDIA_TYPE, {"schema": component.ref})


def _add_header(operation: dict[str, Any], name: str, description: str, *, ok: bool) -> None:
    for status, response in operation.get("responses", {}).items():
        if ok and str(status).startswith("2"):
            headers = response.setdefault("headers", {})
            headers.setdefault(name, {"schema": {"type": "string"}, "description": description})


class _GuardedViewExtension(OpenApiViewExtension):  # type: ignore[no-untyped-call]
    match_subclasses = True

    def view_replacement(self) -> Any:
        view = self.target
        schema_class = type(view.schema)
        if not issubclass(schema_class, GuardedSchemaMixin):
            schema_class = type(
                f"Guarded{schema_class.__name__}", (GuardedSchemaMixin, schema_class), {}
            )
        return type(view.__name__, (view,), {"schema": schema_class()})


class IdempotentViewExtension(_GuardedViewExtension):  # type: ignore[no-untyped-call]
    target_class = "django_idempotency.drf.IdempotentMixin"


class ConditionalUpdateViewExtension(_GuardedViewExtension):  # type: ignore[no-untyped-call]
    target_class = "django_idempotency.drf.ConditionalUpdateMixin"
