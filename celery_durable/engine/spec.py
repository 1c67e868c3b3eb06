"""A durable task as the engine sees it: its body and validated options, built once per task.

The Celery task class (``integration.task``) builds a :class:`TaskSpec` from its declared
options the first time it is needed; everything below the integration layer works from
this frozen value, never from the task object.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..exceptions import DurableConfigError
from ..flow.keys import key_text, resolve_key, stored_key
from ..options import (
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    RateLimit,
    RetryPolicy,
    Schedule,
    Singleton,
    Throttle,
    Timeouts,
    fair_weight_of,
    to_seconds,
)
from ..runtime.events import Event

#: The largest concurrency limit a limit callable or an override may give.
MAX_LIMIT = 1_000_000


@dataclass(frozen=True)
class TaskSpec:
    """The body and the options of one durable task."""

    name: str
    fn: Callable[..., Any]  # the task body (``Task.run``)
    policy: RetryPolicy
    concurrency: tuple[Concurrency, ...] = ()
    priority: int | Callable[..., int] | None = None
    idempotency_key: Any = None
    debounce: Debounce | None = None
    singleton: Singleton | None = None
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    timeouts: Timeouts | None = None
    on_event: str | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    on_failure: dict[str, Any] | None = None
    schedule: Schedule | None = None
    batch: Batch | None = None

    @property
    def signature(self) -> inspect.Signature:
        """The body's signature (``self`` excluded for bound tasks)."""
        return inspect.signature(self.fn)

    @property
    def has_admission(self) -> bool:
        """Whether a call goes through flow control at ``.delay()``."""
        options = (self.idempotency_key, self.debounce, self.singleton, self.throttle, self.rate_limit, self.priority)
        return bool(self.concurrency) or any(option is not None for option in options)

    def call_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments as the body receives them (defaults filled in), for key callables."""
        bound = self.signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.args), dict(bound.kwargs)

    def bound_arguments(self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments by parameter name, as the body receives them."""
        bound = self.signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def deadlines(self, now: datetime) -> dict[str, datetime]:
        """``start_by`` / ``finish_by`` of a run recorded at ``now`` (``Timeouts``)."""
        if self.timeouts is None:
            return {}
        deadlines = {}
        if self.timeouts.start is not None:
            deadlines["start_by"] = now + timedelta(seconds=to_seconds(self.timeouts.start, "Timeouts.start"))
        if self.timeouts.finish is not None:
            deadlines["finish_by"] = now + timedelta(seconds=to_seconds(self.timeouts.finish, "Timeouts.finish"))
        return deadlines

    def body(self) -> Callable[..., Any]:
        """The callable an execution runs (an ``on_event`` task gets its event as an :class:`Event`)."""
        if self.on_event is None:
            return self.fn
        fn = self.fn

        def with_event(*args: Any, **kwargs: Any) -> Any:
            if isinstance(kwargs.get("event"), dict):
                kwargs["event"] = Event.from_json(kwargs["event"])
            return fn(*args, **kwargs)

        return with_event

    def slot_limits(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> dict[str, int]:
        """The slot keys of one call with their limits (``{"task:user-7": 1}``)."""
        if not self.concurrency:
            return {}
        bound = self.bound_arguments(list(args), kwargs)
        call_args, call_kwargs = self.call_arguments(tuple(args), kwargs)
        limits: dict[str, int] = {}
        for index, entry in enumerate(self.concurrency):
            value = resolve_key(self.name, "concurrency", entry.key, bound, call_args, call_kwargs)
            limits[self.slot_key(index, value)] = self._limit_of(entry, call_args, call_kwargs)
        return limits

    def slot_key(self, index: int, value: str) -> str:
        """The stored slot key of concurrency entry ``index`` for a key's text ``value``."""
        entry = self.concurrency[index]
        if entry.scope == "global":
            return stored_key(f"{entry.name}:{value}")
        # The key's path (or position) keeps two dimensions of one task apart.
        return stored_key(f"{self.name}:{entry.key if isinstance(entry.key, str) else f'#{index}'}:{value}")

    def _limit_of(self, entry: Concurrency, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """An entry's limit for one call: an int, or a callable of the arguments (like ``priority``)."""
        if not callable(entry.limit):
            return entry.limit
        try:
            limit = entry.limit(*args, **kwargs)
        except Exception as exc:
            raise DurableConfigError(f"{self.name}: the concurrency limit function raised {exc!r}") from exc
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise DurableConfigError(
                f"{self.name}: a concurrency limit must be an int in 1..{MAX_LIMIT}, got {limit!r}"
            )
        return limit

    def fairness(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> tuple[str, int] | None:
        """The run's fair value (as stored) and its weight, when its concurrency has a ``fair_key``."""
        entry = self.concurrency[0] if len(self.concurrency) == 1 else None
        if entry is None or entry.fair_key is None:
            return None
        bound = self.bound_arguments(list(args), kwargs)
        call_args, call_kwargs = self.call_arguments(tuple(args), kwargs)
        value = resolve_key(self.name, "concurrency fair_key", entry.fair_key, bound, call_args, call_kwargs)
        raw = value if entry.fair_weight is None or callable(entry.fair_weight) else None
        if isinstance(entry.fair_weight, dict):
            # A mapping is looked up by the key's value as the call gave it (a str or an int).
            raw = next((k for k in entry.fair_weight if key_text(self.name, "fair_weight", k) == value), value)
        weight = fair_weight_of(entry.fair_weight, raw, f"{self.name}: Concurrency.fair_weight")
        return stored_key(value), weight

    def priority_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """The run's priority (-600..600 seconds of head start), from an int or a callable."""
        priority = self.priority
        if priority is None:
            return 0
        if callable(priority):
            call_args, call_kwargs = self.call_arguments(args, kwargs)
            try:
                priority = priority(*call_args, **call_kwargs)
            except Exception as exc:
                raise DurableConfigError(f"{self.name}: the priority function raised {exc!r}") from exc
        if isinstance(priority, bool) or not isinstance(priority, int) or not -600 <= priority <= 600:
            raise DurableConfigError(f"{self.name}: priority must be an int in -600..600, got {priority!r}")
        return priority
