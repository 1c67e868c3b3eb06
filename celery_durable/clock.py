"""The one source of "now" for scheduling decisions, replaceable by the testing driver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

_now: Callable[[], datetime] | None = None


def now() -> datetime:
    """The current time (aware UTC; naive local if ``USE_TZ=False``), or the testing clock."""
    if _now is not None:
        return _now()
    from django.conf import settings

    if settings.USE_TZ:
        return datetime.now(UTC)
    return datetime.now()


def set_clock(clock: Callable[[], datetime] | None) -> None:
    """Install (or with ``None`` remove) a replacement clock. Used by ``celery_durable.testing``."""
    global _now
    _now = clock
