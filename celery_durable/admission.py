"""Admission at ``.delay()``: idempotency keys, debounce, singletons, rate limits, throttles.

Each decision reads and writes one ``FlowState`` row per key, locked for the intake
transaction, so concurrent callers on any host see each other's decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction

from . import clock, serialization
from .flow import gcra
from .flow.keys import resolve_key, stored_key
from .models import FINISHED_STATUSES, FlowState, Run, RunStatus
from .options import to_seconds

if TYPE_CHECKING:
    from .integration.task import DurableTask


@dataclass
class Decision:
    """What intake does with a call."""

    kind: str  # "start" | "existing" | "debounced" | "skip"
    run_id: str
    wake_at: datetime | None = None
    reason: str = ""
    cancel: str | None = None  # a singleton run to cancel first
    holds: list[str] | None = None  # FlowState names to point at the new run


def _state(name: str) -> FlowState:
    """The row for ``name``, locked for this transaction (created if missing)."""
    try:
        with transaction.atomic():
            FlowState.objects.get_or_create(name=name)
    except IntegrityError:
        pass  # created concurrently
    return FlowState.objects.select_for_update().get(name=name)


def admit(
    task: DurableTask,
    run_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wake_at: datetime | None,
    args_json: str,
    kwargs_json: str,
) -> Decision:
    """Decide a call's fate; call inside the intake transaction."""
    now = clock.now()
    bound = task.bound_arguments(list(args), kwargs)
    args, kwargs = task.call_arguments(args, kwargs)

    def key(option: str, spec: Any) -> str:
        return stored_key(f"{option}:{task.name}:{resolve_key(task.name, option, spec, bound, args, kwargs)}")

    holds: list[str] = []
    if task.idempotency_key is not None:
        state = _state(key("idempotency_key", task.idempotency_key))
        if state.run_id and state.expires_at and state.expires_at > now:
            return Decision("existing", state.run_id)
        from .conf import get_settings

        state.run_id, state.expires_at = run_id, now + get_settings().IDEMPOTENCY_WINDOW
        state.save(update_fields=["run_id", "expires_at"])
    if task.debounce is not None:
        debounce = task.debounce
        state = _state(key("debounce", debounce.key))
        period = timedelta(seconds=to_seconds(debounce.period, "Debounce.period"))
        if state.run_id and state.started_at:
            latest = now + period
            if debounce.timeout is not None:
                cap = state.started_at + timedelta(seconds=to_seconds(debounce.timeout, "Debounce.timeout"))
                latest = min(latest, cap)
            # The newest call's arguments win, and the start moves out (unless it started already).
            updated = Run.objects.filter(id=state.run_id, status=RunStatus.QUEUED, wake_at__isnull=False).update(
                args=args_json, kwargs=kwargs_json, wake_at=latest
            )
            if updated:
                return Decision("debounced", state.run_id, wake_at=latest)
        state.run_id, state.started_at = run_id, now
        state.save(update_fields=["run_id", "started_at"])
        wake_at = max(wake_at or now, now + period)
    singleton_state = cancel = None
    if task.singleton is not None:
        singleton = task.singleton
        name = key("singleton", singleton.key)
        singleton_state = _state(name)
        holder = (
            singleton_state.run_id
            and Run.objects.filter(id=singleton_state.run_id).exclude(status__in=FINISHED_STATUSES).exists()
        )
        if holder and singleton.mode == "skip":
            return Decision("skip", run_id, reason=f"singleton: run {singleton_state.run_id} is still unfinished")
        cancel = singleton_state.run_id if holder else None
        holds.append(name)
    if task.durable_rate_limit is not None:
        limit = task.durable_rate_limit
        state = _state(key("rate_limit", limit.key))
        # A sliding log of the admissions inside the window: exact "at most limit per period".
        window_start = now - timedelta(seconds=to_seconds(limit.period, "RateLimit.period"))
        admitted = [t for t in serialization.loads(state.admitted) if t > window_start]
        if len(admitted) >= limit.limit:
            return Decision("skip", run_id, reason=f"rate limit: {limit.limit} per {limit.period}")
        state.admitted = serialization.dumps([*admitted, now], "rate limit log")
        state.save(update_fields=["admitted"])
    if task.throttle is not None:
        throttle = task.throttle
        state = _state(key("throttle", throttle.key))
        cell = gcra.Cell(throttle.limit, to_seconds(throttle.period, "Throttle.period"), burst=throttle.burst)
        start, tat = gcra.schedule(cell, state.tat, max(now, wake_at or now))
        state.tat = tat
        state.save(update_fields=["tat"])
        if start > now:
            wake_at = start
    if singleton_state is not None:  # only now: a call the rate limit skips must not take the key
        singleton_state.run_id = run_id
        singleton_state.save(update_fields=["run_id"])
    return Decision("start", run_id, wake_at=wake_at, cancel=cancel, holds=holds)
