"""Checks of text and times passed to the public API, before anything is stored.

Base layer: it imports only :mod:`celery_durable.exceptions` (and Django's settings, lazily).
Bad input raises :class:`~celery_durable.exceptions.DurableConfigError` naming the call, so a
database never sees it: PostgreSQL refuses a NUL in text, no database driver encodes a lone
surrogate, and id columns hold 255 characters.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
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


def wake_time(countdown: Any, eta: Any, now: datetime) -> datetime | None:
    """When a run published with ``countdown`` (seconds) or ``eta`` starts; ``None`` for now.

    ``eta`` (a datetime or ISO 8601 text) wins over ``countdown``. With Django's
    ``USE_TZ = True`` an ``eta`` must be timezone-aware (a naive one is refused: Django and
    Celery would read it in different zones); with ``USE_TZ = False`` it is local time and an
    aware one is converted to it.
    """
    where = "apply_async"
    delay = None
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float):
            raise DurableConfigError(f"{where}: countdown must be a number of seconds, got {countdown!r}")
        if not math.isfinite(countdown) or abs(countdown) > MAX_COUNTDOWN:
            raise DurableConfigError(
                f"{where}: countdown must be a finite number of seconds up to {MAX_COUNTDOWN}, got {countdown!r}"
            )
        delay = float(countdown)
    if eta is not None:
        return _eta(eta, where)
    if delay:
        return now + timedelta(seconds=delay)
    return None


def _eta(eta: Any, where: str) -> datetime:
    from django.conf import settings
    from django.utils import timezone

    if isinstance(eta, str):
        try:
            eta = datetime.fromisoformat(eta)
        except ValueError:
            raise DurableConfigError(f"{where}: eta {eta!r} is not an ISO 8601 date and time") from None
    if not isinstance(eta, datetime):
        raise DurableConfigError(f"{where}: eta must be a datetime or ISO 8601 text, got {eta!r}")
    aware = timezone.is_aware(eta)
    if settings.USE_TZ and not aware:
        raise DurableConfigError(
            f"{where}: eta {eta.isoformat()} has no timezone; with USE_TZ=True pass an aware datetime "
            f"(e.g. datetime.now(UTC) + timedelta(hours=1))"
        )
    try:  # a date near the ends of the calendar may not exist in UTC or in local time
        if aware:
            return timezone.make_naive(eta) if not settings.USE_TZ else eta.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise DurableConfigError(f"{where}: eta {eta!r} cannot be stored: {exc}") from None
    return eta
