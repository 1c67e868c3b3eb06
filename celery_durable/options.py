"""Option objects of ``durable_task``: keyword-only, frozen, validated on construction."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from .exceptions import DurableConfigError

Key = str | Callable[..., Any] | None
Duration = timedelta | int | float
#: The longest duration accepted anywhere (100 years): a deadline or wake time must stay a date.
MAX_DURATION_SECONDS = 100 * 365.25 * 86400


def to_seconds(value: Duration | None, name: str, *, allow_zero: bool = False) -> float:
    """Turn a duration (``timedelta`` or seconds) into seconds, validating it."""
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise DurableConfigError(f"{name} must be a timedelta or seconds, got {value!r}")
    try:
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    except OverflowError:  # an int too large for a float
        seconds = float("inf")
    if seconds < 0 or (seconds == 0 and not allow_zero) or seconds != seconds:
        raise DurableConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if seconds > MAX_DURATION_SECONDS:
        raise DurableConfigError(f"{name} must be at most 100 years, got {value!r}")
    return seconds


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DurableConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _is_path(value: Any) -> bool:
    """A dotted path of Python names (``"order.customer_id"``): looked up, never evaluated."""
    return isinstance(value, str) and bool(value) and all(part.isidentifier() for part in value.split("."))


def _key(value: Any, name: str) -> None:
    if value is None or callable(value):
        return
    if not _is_path(value):
        raise DurableConfigError(f"{name} must be a parameter name (dotted paths allowed) or a callable, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Concurrency:
    """At most ``limit`` runs executing at once per value of ``key``."""

    limit: int
    key: Key = None
    scope: Literal["task", "global"] = "task"
    name: str | None = None

    def __post_init__(self) -> None:
        _positive_int(self.limit, "Concurrency.limit")
        _key(self.key, "Concurrency.key")
        if self.scope not in ("task", "global"):
            raise DurableConfigError(f"Concurrency.scope must be 'task' or 'global', got {self.scope!r}")
        if self.scope == "global" and not self.name:
            raise DurableConfigError("Concurrency(scope='global') needs a name= shared by its tasks")


@dataclass(frozen=True, kw_only=True)
class Throttle:
    """At most ``limit`` starts per ``period`` per key; excess runs are delayed."""

    limit: int
    period: Duration
    key: Key = None
    burst: int = 1

    def __post_init__(self) -> None:
        _positive_int(self.limit, "Throttle.limit")
        to_seconds(self.period, "Throttle.period")
        _positive_int(self.burst, "Throttle.burst")
        _key(self.key, "Throttle.key")


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """At most ``limit`` runs per ``period`` per key; excess runs are skipped."""

    limit: int
    period: Duration
    key: Key = None

    def __post_init__(self) -> None:
        _positive_int(self.limit, "RateLimit.limit")
        to_seconds(self.period, "RateLimit.period")
        _key(self.key, "RateLimit.key")


@dataclass(frozen=True, kw_only=True)
class Debounce:
    """Start only after ``period`` passes with no newer call for the same key."""

    period: Duration
    key: Key = None
    timeout: Duration | None = None

    def __post_init__(self) -> None:
        period = to_seconds(self.period, "Debounce.period")
        _key(self.key, "Debounce.key")
        if self.timeout is not None and to_seconds(self.timeout, "Debounce.timeout") < period:
            raise DurableConfigError("Debounce.timeout must be >= Debounce.period")


@dataclass(frozen=True, kw_only=True)
class Singleton:
    """At most one unfinished run per key; a new call is skipped or cancels the old one."""

    key: Key = None
    mode: Literal["skip", "cancel"] = "skip"

    def __post_init__(self) -> None:
        _key(self.key, "Singleton.key")
        if self.mode not in ("skip", "cancel"):
            raise DurableConfigError(f"Singleton.mode must be 'skip' or 'cancel', got {self.mode!r}")


@dataclass(frozen=True, kw_only=True)
class CancelOn:
    """An event that cancels matching runs."""

    event: str
    match: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event:
            raise DurableConfigError(f"CancelOn.event must be a non-empty str, got {self.event!r}")
        if not isinstance(self.match, dict) or not all(_is_path(p) for pair in self.match.items() for p in pair):
            raise DurableConfigError(
                f"CancelOn.match must map event data paths to task parameter paths (dotted names), got {self.match!r}"
            )


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Cancel a run not started within ``start`` or not finished within ``finish``."""

    start: Duration | None = None
    finish: Duration | None = None

    def __post_init__(self) -> None:
        if self.start is not None:
            to_seconds(self.start, "Timeouts.start")
        if self.finish is not None:
            to_seconds(self.finish, "Timeouts.finish")


@dataclass(frozen=True, kw_only=True)
class Batch:
    """Calls accumulate per ``key``; one run executes them together.

    The run starts when ``max_size`` calls wait, or ``wait`` after the first of them. The
    task body takes one parameter, ``items``: the list of the calls' keyword arguments.
    """

    max_size: int
    wait: Duration
    key: Key = None

    def __post_init__(self) -> None:
        _positive_int(self.max_size, "Batch.max_size")
        to_seconds(self.wait, "Batch.wait")
        _key(self.key, "Batch.key")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Per-step retries with Celery's names and meanings (``retries`` = retries after the first try)."""

    retries: int = 3
    retry_backoff: bool | int | float = True
    retry_backoff_max: int | float = 600
    retry_jitter: bool = True
    default_retry_delay: int | float = 180
    # Celery's ``autoretry_for``: ``None`` retries steps on every exception; a tuple retries
    # steps, and a body that fails outside any step, only on those (minus ``dont_autoretry_for``).
    autoretry_for: tuple[type[BaseException], ...] | None = None
    dont_autoretry_for: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        for name in ("autoretry_for", "dont_autoretry_for"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, tuple)
                or not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in value)
            ):
                raise DurableConfigError(f"{name} must be a tuple of exception classes, got {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise DurableConfigError(f"retries must be an int >= 0, got {self.retries!r}")
        if not isinstance(self.retry_backoff, bool | int | float) or (
            not isinstance(self.retry_backoff, bool) and self.retry_backoff <= 0
        ):
            raise DurableConfigError(f"retry_backoff must be a bool or a positive number, got {self.retry_backoff!r}")
        to_seconds(self.retry_backoff_max, "retry_backoff_max")
        if not isinstance(self.retry_jitter, bool):
            raise DurableConfigError(f"retry_jitter must be a bool, got {self.retry_jitter!r}")
        to_seconds(self.default_retry_delay, "default_retry_delay", allow_zero=True)

    def retries_on(self, error: BaseException) -> bool:
        """Whether ``error`` is one the policy retries (every exception without ``autoretry_for``)."""
        if isinstance(error, self.dont_autoretry_for):
            return False
        return self.autoretry_for is None or isinstance(error, self.autoretry_for)

    def should_retry(self, failed_attempts: int) -> bool:
        """Whether a step that has failed ``failed_attempts`` times may run again."""
        return failed_attempts <= self.retries

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt, as Celery's autoretry computes it."""
        if self.retry_backoff is False:
            return float(self.default_retry_delay)
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(float(self.retry_backoff_max), factor * 2.0 ** (failed_attempts - 1))
        if self.retry_jitter:
            countdown = float((rng or random).uniform(0, countdown))
        return countdown
