"""Errors as stored data: ``{type, module, message, traceback}``, never pickled objects."""

from __future__ import annotations

import traceback
from typing import Any

MAX_TRACEBACK_CHARS = 20_000


def error_record(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as a JSON-safe dict."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": tb[-MAX_TRACEBACK_CHARS:],
    }
