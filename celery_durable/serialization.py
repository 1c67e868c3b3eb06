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


def _check_keys(value: Any, where: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.keys() == MARKER_KEYS:  # kombu would decode it as a typed value, or fail to
                raise SerializationError(
                    f"{where}: a dict with exactly the keys '__type__' and '__value__' is reserved "
                    f"by kombu's JSON (it would come back changed)"
                )
            for key, child in item.items():
                if not isinstance(key, str):
                    raise SerializationError(
                        f"{where}: dict key {key!r} is a {type(key).__name__}; "
                        f"JSON keys must be str (it would come back changed)"
                    )
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def dumps(value: Any, where: str, max_bytes: int | None = None, setting: str | None = None) -> str:
    """Encode ``value`` as JSON text, or raise :class:`SerializationError` naming ``where``.

    Above ``max_bytes`` it raises :class:`StepOutputTooLarge` naming ``setting`` (by default
    ``MAX_ARGUMENT_BYTES`` for arguments, ``MAX_STEP_OUTPUT_BYTES`` otherwise).
    """
    try:
        _check_keys(value, where)
        text = kombu_json.dumps(value, allow_nan=False)
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise SerializationError(f"{where} is not JSON-serializable: {exc}") from exc
    if max_bytes is not None and len(text) > max_bytes and len(text.encode()) > max_bytes:
        setting = setting or ("MAX_ARGUMENT_BYTES" if "argument" in where else "MAX_STEP_OUTPUT_BYTES")
        raise StepOutputTooLarge(
            f"{where} is {len(text.encode())} bytes as JSON, above the limit of {max_bytes} "
            f"(CELERY_DURABLE[{setting!r}])"
        )
    return text


def loads(text: str) -> Any:
    """Decode JSON text written by :func:`dumps`."""
    return kombu_json.loads(text)
