"""Limits that change at run time: a concurrency key's override (``set_limit``)."""

from __future__ import annotations

from typing import Any

from ..exceptions import DurableConfigError
from ..flow.keys import key_text, stored_key
from ..store import slots
from .ports import Publisher, TaskRegistry
from .spec import MAX_LIMIT, TaskSpec


def slot_key(registry: TaskRegistry, name: str, spec: TaskSpec | None, key: Any) -> str:
    """The stored slot key of a task's concurrency (or of a shared ``Concurrency(name=...)``) for ``key``.

    ``key`` is the key's value as the call gives it (a str or an int), or ``None`` for a
    concurrency without ``key``. A ``DurableConfigError`` names what does not fit.
    """
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise DurableConfigError(f"set_limit: the key must be a str, an int or None, got {key!r}")
    if spec is not None:
        if len(spec.concurrency) != 1:
            raise DurableConfigError(
                f"set_limit: task {spec.name!r} has {len(spec.concurrency)} concurrency entries; "
                "name one by its Concurrency(name=...) instead"
                if spec.concurrency
                else f"set_limit: task {spec.name!r} declares no concurrency"
            )
        entry = spec.concurrency[0]
        if (key is None) != (entry.key is None):
            raise DurableConfigError(
                f"set_limit: task {spec.name!r} concurrency {'has a' if entry.key is not None else 'has no'} key"
            )
        return spec.slot_key(0, "*" if key is None else key_text(spec.name, "concurrency", key))
    shared = [e for s in registry.specs() for e in s.concurrency if e.scope == "global" and e.name == name]
    if not shared:
        raise DurableConfigError(
            f"set_limit: {name!r} is neither a durable task with concurrency nor a Concurrency name"
        )
    value = "*" if key is None else key_text(name, "concurrency", key)
    return stored_key(f"{name}:{value}")


def check_limit(limit: Any) -> int | None:
    """An override: ``None`` (remove) or an int in 1..MAX_LIMIT."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT):
        raise DurableConfigError(f"set_limit: the limit must be an int in 1..{MAX_LIMIT} or None, got {limit!r}")
    return limit


def set_override(key: str, limit: int | None, publisher: Publisher) -> tuple[int | None, int | None]:
    """Override (or with ``None`` stop overriding) a key's limit; a raise promotes its backlog now.

    Lowering stops no run. Returns the previous and the new override.
    """
    check_limit(limit)
    change = slots.set_override(key, limit)
    publisher.publish_on_commit(slots.fill(key))
    return change
