"""When a published run starts: ``countdown`` and ``eta`` checked and turned into a wake time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .exceptions import DurableConfigError
from .validation import MAX_COUNTDOWN


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
