"""JSON encoding of arguments, step outputs and results.

Kombu's JSON (the codec Celery itself uses) adds datetime, date, time, Decimal, UUID and
bytes. We refuse what would not come back unchanged (non-string dict keys, NaN, a dict shaped
like kombu's own type marker ``{"__type__": ..., "__value__": ...}``) and never use pickle.
"""

from __future__ import annotations

from typing import Any

from kombu.utils import json as kombu_json

from .exceptions import SerializationError, StepOutputTooLarge

MARKER_KEYS = {"__type__", "__value__"}

#: How many levels of lists and dicts a value passed in may nest (an argument, event data, a
#: step's output). Far below what any decoder on the way handles (Python's JSON decoder stops
#: near 1000 levels, less the caller's stack), so whatever is accepted is always read back.
MAX_DEPTH = 100
#: The cap of any stored document: a value at ``MAX_DEPTH`` inside celery-durable's own
#: envelopes (the arguments list, an event inside a wait's checkpoint, a gather's results).
MAX_STORED_DEPTH = MAX_DEPTH + 28
#: Without a byte limit, at most this many values are walked (shared references included).
MAX_VALUES = 1 << 24

_EXIT = object()


class _TooManyValues(SerializationError):
    """More values than the budget: too large, before encoding anything."""


def check_value(value: Any, where: str, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
    """Refuse what JSON would not bring back unchanged, or at all, naming ``where``.

    A value that contains itself, nesting deeper than ``max_depth`` levels, non-str dict keys,
    a dict shaped like kombu's type marker, and more than ``max_values`` values (shared
    references counted each time they are reached, as JSON writes them) raise
    :class:`SerializationError`. The walk is iterative: the caller's stack depth does not matter.
    """
    path: set[int] = set()  # ids of the containers from the top to the current one
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        if item is _EXIT:
            path.discard(depth)
            continue
        seen += 1
        if seen > max_values:
            raise _TooManyValues(f"{where} holds more than {max_values} values (shared references count each time)")
        if not isinstance(item, dict | list | tuple):
            continue
        if id(item) in path:
            raise SerializationError(f"{where} contains itself (a list or dict inside itself cannot be stored)")
        if depth >= max_depth:
            raise SerializationError(f"{where} nests deeper than {max_depth} levels of lists and dicts")
        path.add(id(item))
        stack.append((_EXIT, id(item)))
        if isinstance(item, dict):
            _check_dict(item, where)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            stack.extend((child, depth + 1) for child in item)


def _check_dict(item: dict[Any, Any], where: str) -> None:
    if item.keys() == MARKER_KEYS:  # kombu would decode it as a typed value, or fail to
        raise SerializationError(
            f"{where}: a dict with exactly the keys '__type__' and '__value__' is reserved "
            f"by kombu's JSON (it would come back changed)"
        )
    for key in item:
        if not isinstance(key, str):
            raise SerializationError(
                f"{where}: dict key {key!r} is a {type(key).__name__}; "
                f"JSON keys must be str (it would come back changed)"
            )


def dumps(
    value: Any,
    where: str,
    max_bytes: int | None = None,
    setting: str | None = None,
    *,
    max_depth: int = MAX_STORED_DEPTH,
) -> str:
    """Encode ``value`` as JSON text, or raise :class:`SerializationError` naming ``where``.

    Above ``max_bytes`` it raises :class:`StepOutputTooLarge` naming ``setting`` (by default
    ``MAX_ARGUMENT_BYTES`` for arguments, ``MAX_STEP_OUTPUT_BYTES`` otherwise). Values
    entering through the public API pass ``max_depth=MAX_DEPTH`` (see :func:`check_value`).
    """
    setting = setting or ("MAX_ARGUMENT_BYTES" if "argument" in where else "MAX_STEP_OUTPUT_BYTES")
    try:
        # Every value is at least one byte of JSON: more values than bytes is too large already.
        check_value(value, where, max_depth, max_values=MAX_VALUES if max_bytes is None else max_bytes)
        text = kombu_json.dumps(value, allow_nan=False)
    except _TooManyValues:
        if max_bytes is None:
            raise
        raise _too_large(where, max_bytes, setting, f"more than {max_bytes} values, above") from None
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SerializationError(f"{where} is not JSON-serializable: {exc}") from exc
    if max_bytes is not None and len(text) > max_bytes and len(text.encode()) > max_bytes:
        raise _too_large(where, max_bytes, setting, f"{len(text.encode())} bytes as JSON, above")
    return text


def _too_large(where: str, max_bytes: int, setting: str, what: str) -> StepOutputTooLarge:
    return StepOutputTooLarge(f"{where} is {what} the limit of {max_bytes} (CELERY_DURABLE[{setting!r}])")


def dumps_value(value: Any, where: str, max_bytes: int | None = None, setting: str | None = None) -> str:
    """:func:`dumps` for a value passed in (event data, a step's output): at most :data:`MAX_DEPTH` deep."""
    return dumps(value, where, max_bytes, setting, max_depth=MAX_DEPTH)


def dumps_arguments(arguments: list[Any] | dict[str, Any], task_name: str, max_bytes: int) -> str:
    """Encode a call's positional (list) or keyword (dict) arguments; an error names the culprit.

    Each argument may nest up to :data:`MAX_DEPTH` levels.
    """
    keyword = isinstance(arguments, dict)
    where = f"{'keyword ' if keyword else ''}arguments of {task_name}"
    try:
        return dumps(arguments, where, max_bytes, max_depth=MAX_DEPTH + 1)
    except SerializationError:
        named = arguments.items() if isinstance(arguments, dict) else enumerate(arguments)
        for name, value in named:
            dumps(value, f"argument {name!r} of {task_name}", max_bytes, max_depth=MAX_DEPTH)
        raise


def loads(text: str) -> Any:
    """Decode JSON text written by :func:`dumps`."""
    return kombu_json.loads(text)
