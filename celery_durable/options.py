"""Option objects of ``durable_task``: keyword-only, frozen, validated on construction."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from .exceptions import DurableConfigError, ScheduleError

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


#: The most turns in a row one fair value may get (``Concurrency.fair_weight``).
MAX_FAIR_WEIGHT = 1000


def _fair_weight(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FAIR_WEIGHT:
        raise DurableConfigError(f"{name} must be an int in 1..{MAX_FAIR_WEIGHT}, got {value!r}")
    return value


def fair_weight_of(weight: Callable[[Any], int] | dict[Any, int] | None, value: Any, name: str) -> int:
    """The turns in a row of one fair value (1 without weights; a mapping defaults to 1)."""
    if weight is None:
        return 1
    if isinstance(weight, dict):
        return _fair_weight(weight.get(value, 1), name)
    try:
        result = weight(value)
    except Exception as exc:
        raise DurableConfigError(f"{name}: the fair_weight function raised {exc!r}") from exc
    return _fair_weight(result, name)


def _is_path(value: Any) -> bool:
    """A dotted path of Python names (``"order.customer_id"``): looked up, never evaluated."""
    return isinstance(value, str) and bool(value) and all(part.isidentifier() for part in value.split("."))


def _key(value: Any, name: str) -> None:
    if value is None or callable(value):
        return
    if not _is_path(value):
        raise DurableConfigError(f"{name} must be a parameter name (dotted paths allowed) or a callable, got {value!r}")


WHEN_FULL = ("queue", "skip", "cancel_oldest")


def _name(value: Any, option: str) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > 100):
        raise DurableConfigError(f"{option}.name must be a non-empty str of at most 100 characters, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Concurrency:
    """At most ``limit`` runs executing at once per value of ``key``.

    ``limit`` may be a callable of the call's arguments (evaluated at ``.delay()``);
    ``fair_key`` shares a full key's freed slots round robin over its values (``fair_weight``
    gives a value several turns in a row); ``when_full`` says what a call does when the key
    is full: wait in the backlog (``"queue"``), end as skipped (``"skip"``) or cancel the
    key's oldest run (``"cancel_oldest"``).
    """

    limit: int | Callable[..., int]
    key: Key = None
    scope: Literal["task", "global"] = "task"
    name: str | None = None
    fair_key: Key = None
    fair_weight: Callable[[Any], int] | dict[Any, int] | None = None
    when_full: Literal["queue", "skip", "cancel_oldest"] = "queue"

    def __post_init__(self) -> None:
        if not callable(self.limit):
            _positive_int(self.limit, "Concurrency.limit")
        _key(self.key, "Concurrency.key")
        _key(self.fair_key, "Concurrency.fair_key")
        if self.fair_weight is not None:
            if self.fair_key is None:
                raise DurableConfigError("Concurrency.fair_weight needs a fair_key")
            if isinstance(self.fair_weight, dict):
                for value, weight in self.fair_weight.items():
                    _fair_weight(weight, f"Concurrency.fair_weight[{value!r}]")
            elif not callable(self.fair_weight):
                raise DurableConfigError(
                    f"Concurrency.fair_weight must be a callable or a mapping, got {self.fair_weight!r}"
                )
        if self.when_full not in WHEN_FULL:
            raise DurableConfigError(
                f"Concurrency.when_full must be one of {', '.join(WHEN_FULL)}, got {self.when_full!r}"
            )
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
    #: Shares one budget across every task that names it (``"stripe"``).
    name: str | None = None

    def __post_init__(self) -> None:
        _name(self.name, "Throttle")
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
    #: Shares one budget across every task that names it.
    name: str | None = None

    def __post_init__(self) -> None:
        _name(self.name, "RateLimit")
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


OVERLAP_POLICIES = ("skip", "buffer_one", "cancel_other", "allow")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Start the task on a timetable, from the services the workers already run (no beat).

    Exactly one of ``cron`` (a 5-field cron string, parsed by Celery's ``crontab``) or
    ``every`` (a ``timedelta``, ticks aligned on the Unix epoch). ``overlap`` says what a
    tick does while the previous scheduled run is unfinished; ``catchup`` how far back
    ticks missed while no services ran are still fired (``None``: only the latest, once).
    """

    cron: str | None = None
    every: timedelta | None = None
    overlap: Literal["skip", "buffer_one", "cancel_other", "allow"] = "skip"
    catchup: timedelta | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ScheduleError("Schedule needs exactly one of cron= or every=")
        if self.cron is not None and (not isinstance(self.cron, str) or len(self.cron.split()) != 5):
            raise ScheduleError(f"Schedule.cron must be a 5-field cron string like '*/5 * * * *', got {self.cron!r}")
        if self.every is not None:
            if not isinstance(self.every, timedelta):
                raise ScheduleError(f"Schedule.every must be a timedelta, got {self.every!r}")
            if self.every < timedelta(seconds=1) or self.every.microseconds:
                raise ScheduleError(f"Schedule.every must be a whole number of seconds >= 1, got {self.every!r}")
            to_seconds(self.every, "Schedule.every")
        if self.overlap not in OVERLAP_POLICIES:
            raise ScheduleError(f"Schedule.overlap must be one of {', '.join(OVERLAP_POLICIES)}, got {self.overlap!r}")
        if self.catchup is not None and (not isinstance(self.catchup, timedelta) or self.catchup <= timedelta(0)):
            raise ScheduleError(f"Schedule.catchup must be a positive timedelta or None, got {self.catchup!r}")
        if self.catchup is not None:
            to_seconds(self.catchup, "Schedule.catchup")
        if not isinstance(self.args, tuple | list) or not isinstance(self.kwargs, dict):
            raise ScheduleError("Schedule.args must be a tuple and Schedule.kwargs a dict")
        object.__setattr__(self, "args", tuple(self.args))

    @property
    def definition(self) -> str:
        """``"cron */5 * * * *"`` / ``"every 300s"``: what the stored schedule row was made from."""
        if self.cron is not None:
            return f"cron {' '.join(self.cron.split())}"
        assert self.every is not None
        return f"every {int(self.every.total_seconds())}s"

    def next_every(self, after: datetime) -> datetime:
        """The first ``every`` tick strictly after ``after`` (ticks are aligned on the Unix epoch)."""
        assert self.every is not None
        step = int(self.every.total_seconds())
        epoch = datetime(1970, 1, 1, tzinfo=after.tzinfo) if after.tzinfo else datetime(1970, 1, 1)
        elapsed = (after - epoch) // timedelta(seconds=1)  # whole seconds, floored
        return epoch + timedelta(seconds=(elapsed // step + 1) * step)
