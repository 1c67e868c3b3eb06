"""Admission at ``.delay()``: idempotency keys, debounce, singletons, rate limits, throttles.

Each decision reads and writes one flow-state row per key (:mod:`..store.flow_state`),
locked for the intake transaction, so concurrent callers on any host see each other's decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .. import clock, serialization
from ..conf import get_settings
from ..flow import gcra
from ..flow.keys import resolve_key, stored_key
from ..options import to_seconds
from ..store import flow_state
from .spec import TaskSpec


@dataclass
class Decision:
    """What intake does with a call."""

    kind: str  # "start" | "existing" | "debounced" | "skip"
    run_id: str
    wake_at: datetime | None = None
    reason: str = ""
    cancel: str | None = None  # a singleton run to cancel first
    holds: list[str] | None = None  # FlowState names to point at the new run


def admit(
    spec: TaskSpec,
    run_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wake_at: datetime | None,
    args_json: str,
    kwargs_json: str,
) -> Decision:
    """Decide a call's fate; call inside the intake transaction."""
    now = clock.now()
    bound = spec.bound_arguments(list(args), kwargs)
    args, kwargs = spec.call_arguments(args, kwargs)

    def key(option: str, key_spec: Any, shared: str | None = None) -> str:
        # A shared ``name=`` replaces the task's name: one budget for every task naming it.
        owner = spec.name if shared is None else f"={shared}"
        return stored_key(f"{option}:{owner}:{resolve_key(spec.name, option, key_spec, bound, args, kwargs)}")

    holds: list[str] = []
    if spec.idempotency_key is not None:
        state = flow_state.lock(key("idempotency_key", spec.idempotency_key))
        if state.run_id and state.expires_at and state.expires_at > now:
            return Decision("existing", state.run_id)
        flow_state.save(state, run_id=run_id, expires_at=now + get_settings().IDEMPOTENCY_WINDOW)
    if spec.debounce is not None:
        debounce = spec.debounce
        state = flow_state.lock(key("debounce", debounce.key))
        period = timedelta(seconds=to_seconds(debounce.period, "Debounce.period"))
        if state.run_id and state.started_at:
            latest = now + period
            if debounce.timeout is not None:
                cap = state.started_at + timedelta(seconds=to_seconds(debounce.timeout, "Debounce.timeout"))
                latest = min(latest, cap)
            # The newest call's arguments win, and the start moves out (unless it started already).
            if flow_state.debounce(state.run_id, args_json, kwargs_json, latest):
                return Decision("debounced", state.run_id, wake_at=latest)
        flow_state.save(state, run_id=run_id, started_at=now)
        wake_at = max(wake_at or now, now + period)
    singleton_state = cancel = None
    if spec.singleton is not None:
        singleton = spec.singleton
        name = key("singleton", singleton.key)
        singleton_state = flow_state.lock(name)
        holder = bool(singleton_state.run_id) and flow_state.is_unfinished(str(singleton_state.run_id))
        if holder and singleton.mode == "skip":
            return Decision("skip", run_id, reason=f"singleton: run {singleton_state.run_id} is still unfinished")
        cancel = singleton_state.run_id if holder else None
        holds.append(name)
    if spec.rate_limit is not None:
        limit = spec.rate_limit
        state = flow_state.lock(key("rate_limit", limit.key, limit.name))
        # A sliding log of the admissions inside the window: exact "at most limit per period".
        window_start = now - timedelta(seconds=to_seconds(limit.period, "RateLimit.period"))
        admitted = [t for t in serialization.loads(state.admitted) if t > window_start]
        if len(admitted) >= limit.limit:
            return Decision("skip", run_id, reason=f"rate limit: {limit.limit} per {limit.period}")
        flow_state.save(state, admitted=serialization.dumps([*admitted, now], "rate limit log"))
    if spec.throttle is not None:
        start = throttle_slot(spec, key("throttle", spec.throttle.key, spec.throttle.name), max(now, wake_at or now))
        if start > now:
            wake_at = start
    if singleton_state is not None:  # only now: a call the rate limit skips must not take the key
        flow_state.save(singleton_state, run_id=run_id)
    return Decision("start", run_id, wake_at=wake_at, cancel=cancel, holds=holds)


def throttle_slot(spec: TaskSpec, name: str, not_before: datetime) -> datetime:
    """Take the next slot of the throttle state ``name`` at or after ``not_before`` (inside a transaction)."""
    throttle = spec.throttle
    assert throttle is not None
    state = flow_state.lock(name)
    cell = gcra.Cell(throttle.limit, to_seconds(throttle.period, "Throttle.period"), burst=throttle.burst)
    start, tat = gcra.schedule(cell, state.tat, not_before)
    flow_state.save(state, tat=tat)
    return start


def resumed_start(spec: TaskSpec, args_json: str, kwargs_json: str) -> datetime | None:
    """When a run held by a pause may start once resumed: its throttle's next slot (``None``: now).

    The throttle's slots were taken at ``.delay()``; a pause let them pass, so a resumed run
    takes a new one, in resume order, as a new call would.
    """
    if spec.throttle is None:
        return None
    now = clock.now()
    args, kwargs = serialization.loads(args_json), serialization.loads(kwargs_json)
    bound = spec.bound_arguments(list(args), kwargs)
    call_args, call_kwargs = spec.call_arguments(tuple(args), kwargs)
    value = resolve_key(spec.name, "throttle", spec.throttle.key, bound, call_args, call_kwargs)
    owner = spec.name if spec.throttle.name is None else f"={spec.throttle.name}"
    start = throttle_slot(spec, stored_key(f"throttle:{owner}:{value}"), now)
    return start if start > now else None
