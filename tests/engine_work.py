"""How the engine's tests drive ``engine.execute``: an intent and a policy with defaults,
a capture that stores the work's result, and Work that writes an Order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django_idempotency import engine
from django_idempotency.operation import Intent, Operation, Policy, Stored
from tests.testapp.models import Order

MODES = [engine.Mode.TWO_PHASE, engine.Mode.SINGLE_TRANSACTION, engine.Mode.NON_ATOMIC]


TRANSACTIONAL = [engine.Mode.TWO_PHASE, engine.Mode.SINGLE_TRANSACTION]


def intent(key: str = "k1", fingerprint: str = "f" * 64, scope: str = "s") -> Intent:
    return Intent(scope=scope, key=key, fingerprint=fingerprint, method="POST", route="/x/")


def policy(mode: engine.Mode = engine.Mode.TWO_PHASE, **kwargs: Any) -> Policy:
    values: dict[str, Any] = {"lease": timedelta(seconds=90), "ttl": timedelta(hours=1)}
    values.update(kwargs)
    return Policy(mode=mode, **values)


def store(value: Any) -> Stored | None:
    """The capture function: store ``value`` unless the work says it failed."""
    if value == "failed":
        return None
    return Stored(status=201, headers={"X-Value": str(value)}, body=str(value).encode())


class Work:
    """Work that writes an Order and counts its calls."""

    def __init__(self, result: Any = "done", action: Any = None) -> None:
        self.calls = 0
        self.result = result
        self.action = action
        self.operations: list[Operation] = []

    def __call__(self, operation: Operation) -> Any:
        self.calls += 1
        self.operations.append(operation)
        Order.objects.create(reference=f"{operation.key}:{operation.attempt}")
        if self.action is not None:
            self.action(operation)
        return self.result


def run(work: Work, mode=engine.Mode.TWO_PHASE, **kwargs: Any) -> Any:
    return engine.execute(kwargs.pop("intent", intent()), policy(mode, **kwargs), work, store)
