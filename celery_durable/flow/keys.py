"""Flow-control keys: a parameter path (``"order.customer_id"``) or a callable over the arguments."""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from ..exceptions import DurableConfigError
from ..runtime.events import MISSING, lookup

#: Key columns (``FlowState.name``, ``Slot.key``, a run's slot keys) hold this many characters.
MAX_STORED_KEY = 255
_HASH_SUFFIX = re.compile(r"~[0-9a-f]{64}\Z")
_INT_TEXT = re.compile(r"-?[0-9]+\Z")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


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
    return key_text(task_name, option, value)


def key_text(task_name: str, option: str, value: str | int) -> str:
    """A key value as text, keeping ``7`` and ``"7"`` apart.

    An int is its digits; a str is itself, except one that reads as an int or starts with
    ``"`` is quoted (``"7"`` becomes ``'"7"'``), so no str and int ever share a text.
    """
    if isinstance(value, int):
        try:
            return str(int(value))
        except ValueError as exc:  # more digits than Python prints (sys.get_int_max_str_digits)
            raise DurableConfigError(f"{task_name}: the {option} key is an int too large to use: {exc}") from None
    return f'"{value}"' if value.startswith('"') or _INT_TEXT.match(value) else value


def stored_key(name: str) -> str:
    """``name`` as it is stored in a key column: itself, or a readable prefix and its sha256.

    A name longer than :data:`MAX_STORED_KEY`, with a NUL or a lone surrogate (which no
    database stores), or ending like a hashed name is stored as ``<prefix>~<sha256 of the
    whole>``: distinct names never share a row, however long.
    """
    if len(name) <= MAX_STORED_KEY and not _UNSTORABLE.search(name) and not _HASH_SUFFIX.search(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = _UNSTORABLE.sub("", name[: MAX_STORED_KEY - 65])
    return f"{prefix}~{digest}"
