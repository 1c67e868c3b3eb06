"""Flow-control keys: a parameter path (``"order.customer_id"``) or a callable over the arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..exceptions import DurableConfigError
from ..runtime.events import MISSING, lookup


def check_key_spec(task_name: str, option: str, key: Any, fn: Callable[..., Any] | None) -> None:
    """At declaration: a string key is a dotted path of names and starts with a parameter of the task.

    A key string is looked up in the arguments, never evaluated.
    """
    if not isinstance(key, str):
        return
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise DurableConfigError(
            f"{task_name}: option {option!r} key {key!r} is not a parameter path like 'order.customer_id' "
            f"(use a callable for anything else)"
        )
    if fn is None:
        return
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    first = key.split(".")[0]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if first not in parameters and not accepts_any:
        raise DurableConfigError(
            f"{task_name}: option {option!r} key {key!r} names no parameter of the task "
            f"(parameters: {', '.join(parameters) or 'none'})"
        )


def resolve_key(
    task_name: str,
    option: str,
    key: Any,
    bound: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    """The key's value for one call, as a string; ``DurableConfigError`` naming the task otherwise."""
    if key is None:
        return "*"
    if callable(key):
        try:
            value = key(*args, **kwargs)
        except Exception as exc:
            raise DurableConfigError(f"{task_name}: the {option} key function raised {exc!r}") from exc
    else:
        value = lookup(bound, key)
        if value is MISSING:
            raise DurableConfigError(f"{task_name}: the {option} key {key!r} is missing from the arguments")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DurableConfigError(
            f"{task_name}: the {option} key must be a str or int, got {type(value).__name__} {value!r}"
        )
    return str(value)
