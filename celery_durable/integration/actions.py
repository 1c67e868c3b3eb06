"""Acting on runs from anywhere (a view, a command, a step).

The engine's operations wired to the current Celery app's registry and publisher; the
public facade (``api``) and the operator surfaces call these.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import current_app
from django.db import transaction

from .. import serialization
from ..engine import cancel as cancelling
from ..engine import events, limits, schedules
from ..engine import pause as pausing_engine
from ..engine.spec import TaskSpec
from ..exceptions import DurableConfigError, RunNotFound, TaskNotRegistered
from ..models import Pause, Run
from ..runtime.events import Event
from ..store import batches, forks, pausing, runs
from ..store import explain as explaining
from ..store import replay as replaying
from ..store.explain import Explanation
from .registry import CeleryPublisher, ports
from .timetable import CeleryTimetable

# Stored publish options a fork does not take over: callbacks and the original's parentage.
_NOT_FORKED = ("link", "link_error", "shadow", "parent_id", "root_id")


def send_event(name: str, data: dict[str, Any] | None = None, *, id: str | None = None) -> Event:
    """Record an event; start ``on_event`` tasks, resume matching waits, apply ``cancel_on``."""
    registry, publisher = ports()
    return events.send_event(name, data, id, registry, publisher)


def get_run(run_id: str) -> Run:
    """The run with this id, or raise ``RunNotFound``."""
    return runs.get(run_id)


def batch_run(call_id: str) -> Run | None:
    """The run a batched call joined; ``None`` while its batch forms (see :func:`celery_durable.batch_run`)."""
    runs.check_id(call_id)
    item = batches.get_item(call_id)
    if item is None:
        raise RunNotFound(call_id)
    return None if item.run_id is None else runs.get(item.run_id)


def replay(run_id: str, from_step: str | None = None) -> Run:
    """Queue a failed or cancelled run again (see :func:`celery_durable.replay`)."""
    message = replaying.replay(run_id, from_step)
    with contextlib.suppress(NotImplementedError):
        current_app.AsyncResult(run_id).forget()
    _registry, publisher = ports()
    publisher.publish_on_commit([message])
    return runs.get(run_id)


def cancel(run_id: str, reason: str = "") -> Run:
    """Cancel a run and its unfinished children (see :func:`celery_durable.cancel`)."""
    _registry, publisher = ports()
    cancelling.cancel(run_id, reason, publisher)
    return runs.get(run_id)


def fork(
    run_id: str,
    from_step: str | None = None,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Run:
    """Start a new run reusing the original's checkpoints before ``from_step`` (see :func:`celery_durable.fork`).

    The fork is a call of the same task (``apply_async`` with a new id, so flow control
    admits it like any call); its row, its link to the original and the copied checkpoints
    commit together, before its message is published.
    """
    if args is not None and (isinstance(args, str | bytes | dict) or not isinstance(args, Sequence)):
        raise DurableConfigError(f"fork(args=...) must be a list of positional arguments, got {args!r}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise DurableConfigError(f"fork(kwargs=...) must be a dict of keyword arguments, got {kwargs!r}")
    with transaction.atomic():
        original, steps = forks.plan(run_id, from_step)
        task = current_app.tasks.get(original.task_name)
        if task is None or getattr(task, "durable_spec", None) is None:
            raise TaskNotRegistered(original.task_name)
        options = {k: v for k, v in serialization.loads(original.options).items() if k not in _NOT_FORKED}
        fork_id = str(uuid.uuid4())
        result = task.apply_async(
            tuple(original.args_value if args is None else args),
            dict(original.kwargs_value if kwargs is None else kwargs),
            task_id=fork_id,
            **options,
        )
        if result.id == fork_id:
            forks.attach(fork_id, original, from_step, steps)
    return runs.get(str(result.id))


def pause_schedule(task_name: str) -> bool:
    """Stop firing the ticks of ``task_name``'s schedule; ``False`` if it was paused already."""
    return schedules.pause(task_name)


def resume_schedule(task_name: str) -> bool:
    """Fire ``task_name``'s schedule again from its next tick; ``False`` if it was not paused."""
    return schedules.resume(CeleryTimetable(current_app), task_name)


def trigger_schedule(task_name: str) -> str:
    """Start one run of ``task_name``'s schedule now; its run id."""
    return schedules.trigger(CeleryTimetable(current_app), CeleryPublisher(current_app), task_name)


def backfill_schedule(task_name: str, start: datetime, end: datetime) -> list[str]:
    """Fire each tick of ``task_name``'s schedule in ``[start, end]`` not fired yet; the run ids started."""
    return schedules.backfill(CeleryTimetable(current_app), CeleryPublisher(current_app), task_name, start, end)


def _check_task(task_name: str) -> None:
    """A pause names a durable task this app knows; ``TaskNotRegistered`` otherwise."""
    pausing.check_scope(task_name, None)
    registry, _publisher = ports()
    if registry.spec(task_name) is None:
        raise TaskNotRegistered(task_name)


def pause(task_name: str, key: str | None = None, by: str = "") -> Pause:
    """Pause a task or one of its concurrency keys (see :func:`celery_durable.pause`)."""
    _check_task(task_name)
    held, _created = pausing_engine.pause(task_name, key, by)
    return held


def resume(task_name: str, key: str | None = None) -> list[str]:
    """Lift a pause; the ids of the runs queued again, in order (see :func:`celery_durable.resume`)."""
    pausing.check_scope(task_name, key)
    registry, publisher = ports()
    return pausing_engine.resume(task_name, key, registry, publisher).run_ids


def explain(run_id: str) -> Explanation:
    """Why a run is waiting (see :func:`celery_durable.explain`)."""
    return explaining.explain(run_id)


def set_limit(name_or_task: Any, key: Any, limit: int | None) -> tuple[int | None, int | None]:
    """Override a concurrency key's limit (see :func:`celery_durable.set_limit`)."""
    registry, publisher = ports()
    spec = getattr(name_or_task, "durable_spec", None)
    if isinstance(name_or_task, str):
        spec = registry.spec(name_or_task)
        name = name_or_task
    elif isinstance(spec, TaskSpec):
        name = spec.name
    else:
        raise DurableConfigError(f"set_limit: expected a durable task or a Concurrency name, got {name_or_task!r}")
    limits.check_limit(limit)
    return limits.set_override(limits.slot_key(registry, name, spec, key), limit, publisher)


def set_key_limit(key: str, limit: int | None) -> tuple[int | None, int | None]:
    """Override the limit of a stored slot key (the admin's "Limits" page)."""
    _registry, publisher = ports()
    return limits.set_override(key, limit, publisher)
