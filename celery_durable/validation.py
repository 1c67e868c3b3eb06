"""Checks of text and times passed to the public API, before anything is stored.

Base layer: it imports only :mod:`celery_durable.exceptions` (and Django's settings, lazily).
Bad input raises :class:`~celery_durable.exceptions.DurableConfigError` naming the call, so a
database never sees it: PostgreSQL refuses a NUL in text, no database driver encodes a lone
surrogate, and id columns hold 255 characters.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from .exceptions import DurableConfigError

#: Ids (run ids, event ids) are at most this many characters.
MAX_ID_LENGTH = 255
#: A ``countdown`` is at most this many seconds (100 years) either way.
MAX_COUNTDOWN = 100 * 366 * 86400

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> bool:
    """Whether every database stores ``text`` as it is: no NUL, no lone surrogate."""
    return _UNSTORABLE.search(text) is None


def check_text(value: Any, where: str, *, optional: bool = False) -> str | None:
    """``value`` if it is a str every database stores (``None`` too when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not storable(value):
        raise DurableConfigError(f"{where} must be a str without NUL or lone surrogates, got {value!r}")
    return value


def check_identifier(value: Any, where: str) -> str:
    """A non-empty str of at most :data:`MAX_ID_LENGTH` characters without NUL or lone surrogates."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not storable(value):
        raise DurableConfigError(
            f"{where} must be a non-empty str (max {MAX_ID_LENGTH}, no NUL or lone surrogates), got {value!r}"
        )
    return value


def task_id(value: Any, task_name: str) -> str | None:
    """The ``task_id`` of ``apply_async`` (a str or UUID), or ``None`` to generate one, as Celery does."""
    if value is None or value == "":
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    return check_identifier(value, f"{task_name}.apply_async(task_id=...)")
