"""Run metadata and step progress: checks of what ``step.set_metadata`` and ``step.progress`` take.

Metadata fields are small JSON scalars under identifier names, stored on the run and
indexed for equality search as text (:func:`search_text`). No Django here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..exceptions import InvalidMetadata
from ..validation import storable

#: A field name: a Python identifier of at most this many characters.
MAX_FIELD_LENGTH = 64
#: A value's search text (its JSON, or the str itself) is at most this many characters.
MAX_VALUE_LENGTH = 200
#: At most this many fields per run.
MAX_FIELDS = 32
#: A progress message is cut to this many characters.
MAX_MESSAGE_LENGTH = 200

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def search_text(value: Any) -> str:
    """How a value is indexed and searched: a str as itself, anything else as its JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def check_fields(fields: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``fields`` if every name and value is valid and the run stays within :data:`MAX_FIELDS`."""
    for name, value in fields.items():
        if not _FIELD.match(name) or len(name) > MAX_FIELD_LENGTH:
            raise InvalidMetadata(
                f"metadata field {name!r} is not an identifier of at most {MAX_FIELD_LENGTH} characters"
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise InvalidMetadata(f"metadata field {name!r}: {value!r} is not a str, int, float, bool or None")
        if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
            raise InvalidMetadata(f"metadata field {name!r}: {value!r} is not a finite number")
        text = search_text(value)
        if len(text) > MAX_VALUE_LENGTH or not storable(text):
            raise InvalidMetadata(
                f"metadata field {name!r}: the value is longer than {MAX_VALUE_LENGTH} characters "
                f"or holds a NUL or lone surrogate"
            )
    if len({*current, *fields}) > MAX_FIELDS:
        raise InvalidMetadata(f"a run holds at most {MAX_FIELDS} metadata fields")
    return fields


def check_progress(done: Any, total: Any, message: Any) -> dict[str, Any]:
    """The progress record ``{"done", "total", "message"}``, or raise ``InvalidMetadata``."""
    for name, value in (("done", done), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise InvalidMetadata(f"step.progress: {name} must be a non-negative number, got {value!r}")
    if not isinstance(message, str) or not storable(message):
        raise InvalidMetadata(f"step.progress: message must be a str, got {message!r}")
    return {"done": done, "total": total, "message": message[:MAX_MESSAGE_LENGTH]}
