"""Stored values as a person reads them: the admin, ``durable_runs show`` and ``--json``.

Arguments, step outputs and results are kombu JSON (:mod:`celery_durable.serialization`):
plain JSON plus datetime, date, time, Decimal, UUID and bytes, stored as markers like
``{"__type__": "datetime", "__value__": "..."}``. Here every such value becomes plain JSON
(ISO 8601 text for dates and times, the exact digits of a Decimal, the canonical form of a
UUID, the text of UTF-8 bytes), so it can be printed, indented and exported as JSON.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from . import serialization


def bytes_text(value: bytes) -> str:
    """UTF-8 bytes as their text; other bytes as ``base64:<data>``."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()


def readable(value: Any) -> Any:
    """``value`` with every kombu-encoded type replaced by its plain JSON form (recursive)."""
    if isinstance(value, dict):
        return {str(key): readable(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [readable(child) for child in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes_text(bytes(value))
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as readable JSON text (any kombu-encoded type, never an exception)."""
    return json.dumps(readable(value), indent=indent, ensure_ascii=False, sort_keys=indent is not None, default=str)


def pretty(text: str | None, limit: int) -> tuple[str, bool]:
    """Stored JSON text indented for display, cut at ``limit`` characters: (text, truncated).

    Text that is not valid JSON (or not kombu's) is shown as stored.
    """
    if text is None:
        return "", False
    try:
        shown = dumps(serialization.loads(text), indent=2)
    except (ValueError, TypeError, KeyError):
        shown = text
    return (shown[:limit], True) if len(shown) > limit else (shown, False)


def compact(text: str | None, limit: int) -> str:
    """Stored JSON text on one line for a preview, cut at ``limit`` characters with ``…``.

    Works on a prefix of the stored text too (a preview of a large value is read from the
    database cut): markers in it are rewritten by :func:`unmark`.
    """
    if not text:
        return ""
    try:
        shown = dumps(serialization.loads(text))
    except (ValueError, TypeError, KeyError):
        shown = unmark(text)
    return shown[:limit] + "…" if len(shown) > limit else shown


_STRING = r'"(?:[^"\\]|\\.)*"'
_MARKER = re.compile(
    r'\{"__type__":\s*"(?P<type>\w+)",\s*"__value__":\s*'
    r"(?:(?P<text>" + _STRING + r')|\{"hex":\s*"(?P<hex>[0-9a-fA-F]{32})"\})\}'
)


def _replace(match: re.Match[str]) -> str:
    if match.group("hex"):
        return json.dumps(str(uuid.UUID(hex=match.group("hex"))))
    text = match.group("text")
    if match.group("type") == "base64":
        try:
            return json.dumps(bytes_text(base64.b64decode(json.loads(text))), ensure_ascii=False)
        except ValueError:
            return text
    return text


def unmark(text: str) -> str:
    """JSON text (possibly cut) with each complete kombu marker replaced by its readable value."""
    return _MARKER.sub(_replace, text)
