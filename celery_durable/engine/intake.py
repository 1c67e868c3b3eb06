"""Intake at ``.delay()``: a call becomes a recorded run, through flow control when declared."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from .. import clock, serialization
from ..conf import get_settings
from ..exceptions import DurableError
from ..states import RunStatus
from ..store import cancellation, fair, runs, slots
from ..store.messages import RunMessage
from . import admission, cancel
from .ports import Publisher
from .spec import TaskSpec

SINGLETON_REPLACED = "replaced by a newer run (Singleton mode='cancel')"
CANCELLED_OLDEST = "cancelled to admit a newer run (Concurrency when_full='cancel_oldest')"


@dataclass(frozen=True)
class Intake:
    """Which run a call's result follows, and why it will not run if flow control skipped it."""

    run_id: str
    skipped: str | None = None


def record(
    spec: TaskSpec,
    message: RunMessage,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wake_at: datetime | None,
    publisher: Publisher,
) -> Intake:
    """Record the call ``message`` describes; its message goes out when the transaction commits."""
    if spec.has_admission:
        return _admit(spec, message, args, kwargs, wake_at, publisher)
    created = runs.record(message, wake_at=wake_at, deadlines=spec.deadlines(clock.now()))
    if created and wake_at is None:
        publisher.publish_on_commit([message])
    return Intake(message.run_id)


def _admit(
    spec: TaskSpec,
    message: RunMessage,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wake_at: datetime | None,
    publisher: Publisher,
) -> Intake:
    """Intake through flow control (idempotency, debounce, singleton, rate limit, throttle, concurrency)."""
    replaced = evicted = skipped = None
    with transaction.atomic():
        decision = admission.admit(spec, message.run_id, args, kwargs, wake_at, message.args, message.kwargs)
        if decision.kind in ("existing", "debounced"):
            return Intake(decision.run_id)
        if decision.kind == "skip":
            runs.create_skipped(message, decision.reason)
            return Intake(message.run_id, skipped=decision.reason)
        if decision.cancel is not None:
            try:
                replaced = cancellation.cancel(decision.cancel, SINGLETON_REPLACED)
            except DurableError:
                replaced = None  # it finished meanwhile
        priority = spec.priority_of(args, kwargs)
        limits = spec.slot_limits(args, kwargs)
        fairness = spec.fairness(args, kwargs)
        keys = sorted(limits)
        backlogged = bool(limits) and decision.wake_at is None
        backlog_at = slots.backlog_time(priority)
        created = runs.record(
            message,
            wake_at=decision.wake_at,
            deadlines=spec.deadlines(clock.now()),
            extra={
                "priority": priority,
                "backlog_at": backlog_at,
                "slot_key1": keys[0] if keys else None,
                "slot_key2": keys[1] if len(keys) > 1 else None,
                "status": RunStatus.PENDING if backlogged else RunStatus.QUEUED,
                **(_fair_columns(keys[0], *fairness, backlog_at) if fairness else {}),
            },
        )
        if created and (backlogged or decision.wake_at is None):
            # A backlogged run is admitted now if every slot is free; otherwise it waits in the backlog.
            admitted = slots.admit(message.run_id, limits, fairness is not None) if backlogged else True
            if admitted:
                publisher.publish_on_commit([message])
            else:
                full = when_full(spec, message.run_id, keys)
                evicted, skipped = full.evicted, full.skipped
    if replaced is not None:
        cancel.finish(replaced, publisher)
    if evicted is not None:
        cancel.finish(evicted, publisher)
    return skipped or Intake(message.run_id)


def _fair_columns(key: str, value: str, weight: int, backlog_at: datetime) -> dict[str, Any]:
    """A fair run's columns: its key, value, weight and round (its turn, fixed now)."""
    turn = fair.round_for(key, value, weight, backlog_at)
    return {"fair_slot": key, "fair_value": value, "fair_weight": weight, "fair_round": turn}


@dataclass(frozen=True)
class Full:
    """What ``when_full`` did with a call whose key was full."""

    skipped: Intake | None = None
    evicted: cancellation.Cancellation | None = None


def when_full(spec: TaskSpec, run_id: str, keys: list[str]) -> Full:
    """A full key's ``when_full``: wait (``None``), end the new run as skipped, or cancel the oldest."""
    mode = spec.concurrency[0].when_full if len(spec.concurrency) == 1 else "queue"
    if mode == "skip":
        reason = f"concurrency: key {keys[0]} is full (when_full='skip')"
        runs.skip_pending(run_id, reason)
        return Full(skipped=Intake(run_id, skipped=reason))
    if mode == "cancel_oldest":
        oldest = slots.oldest_holder(keys[0])
        if oldest is not None:
            try:
                return Full(evicted=cancellation.cancel(oldest, CANCELLED_OLDEST))
            except DurableError:
                pass  # it finished meanwhile: its slot goes to the backlog
    return Full()


def encode_arguments(task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
    """A call's arguments as stored JSON; a :class:`SerializationError` names the argument at fault."""
    limit = get_settings().MAX_ARGUMENT_BYTES
    return serialization.dumps_arguments(list(args), task_name, limit), serialization.dumps_arguments(
        kwargs, task_name, limit
    )
