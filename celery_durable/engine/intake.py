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
from ..store import cancellation, runs, slots
from ..store.messages import RunMessage
from . import admission, cancel
from .ports import Publisher
from .spec import TaskSpec

SINGLETON_REPLACED = "replaced by a newer run (Singleton mode='cancel')"


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
    replaced = None
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
        keys = sorted(limits)
        backlogged = bool(limits) and decision.wake_at is None
        created = runs.record(
            message,
            wake_at=decision.wake_at,
            deadlines=spec.deadlines(clock.now()),
            extra={
                "priority": priority,
                "backlog_at": slots.backlog_time(priority),
                "slot_key1": keys[0] if keys else None,
                "slot_key2": keys[1] if len(keys) > 1 else None,
                "status": RunStatus.PENDING if backlogged else RunStatus.QUEUED,
            },
        )
        # A backlogged run is admitted now if every slot is free; otherwise it waits in the backlog.
        if created and (slots.admit(message.run_id, limits) if backlogged else decision.wake_at is None):
            publisher.publish_on_commit([message])
    if replaced is not None:
        cancel.finish(replaced, publisher)
    return Intake(message.run_id)


def encode_arguments(task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
    """A call's arguments as stored JSON; a :class:`SerializationError` names the argument at fault."""
    limit = get_settings().MAX_ARGUMENT_BYTES
    return serialization.dumps_arguments(list(args), task_name, limit), serialization.dumps_arguments(
        kwargs, task_name, limit
    )
