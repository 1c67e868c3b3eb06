"""Errors as stored data: ``{type, module, message, traceback}``, never pickled objects.

The message and the traceback are each cut to ``CELERY_DURABLE['MAX_ERROR_TEXT_BYTES']``
bytes of UTF-8 (64 KiB by default), with a marker saying how long they were: an exception
carrying megabytes of text must not be stored (twice: on the run and on its step) in full.
"""

from __future__ import annotations

import traceback
from typing import Any

#: The default of ``CELERY_DURABLE['MAX_ERROR_TEXT_BYTES']``.
DEFAULT_MAX_ERROR_TEXT_BYTES = 65_536


def cap_text(text: str, max_bytes: int, *, keep_end: bool = False) -> str:
    """``text`` if it fits in ``max_bytes`` bytes of UTF-8; else its start (or end) and a marker."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    marker = f" [... truncated: {len(data)} bytes in all ...] "
    keep = max(0, max_bytes - len(marker))
    part = data[len(data) - keep :] if keep_end else data[:keep]
    piece = part.decode("utf-8", "ignore")  # a character cut in two is dropped
    return marker.lstrip() + piece if keep_end else piece + marker.rstrip()


def error_record(exc: BaseException, max_bytes: int | None = None) -> dict[str, Any]:
    """Describe ``exc`` as a JSON-safe dict, its message and traceback capped at ``max_bytes``.

    Callers pass the ``MAX_ERROR_TEXT_BYTES`` setting (:func:`celery_durable.conf.error_text_limit`).
    """
    limit = DEFAULT_MAX_ERROR_TEXT_BYTES if max_bytes is None else max_bytes
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": cap_text(str(exc), limit),
        "traceback": cap_text(tb, limit, keep_end=True),  # the end says where it was raised
    }
