"""Acting on runs from anywhere (a view, a command, a step).

The engine's operations wired to the current Celery app's registry and publisher; the
public facade (``api``) and the operator surfaces call these.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from celery import current_app

from ..engine import cancel as cancelling
from ..engine import events, schedules
from ..models import Run
from ..runtime.events import Event
from ..store import replay as replaying
from ..store import runs
from .registry import CeleryPublisher, ports
from .timetable import CeleryTimetable


def send_event(name: str, data: dict[str, Any] | None = None, *, id: str | None = None) -> Event:
    """Record an event; start ``on_event`` tasks, resume matching waits, apply ``cancel_on``."""
    registry, publisher = ports()
    return events.send_event(name, data, id, registry, publisher)


def get_run(run_id: str) -> Run:
    """The run with this id, or raise ``RunNotFound``."""
    return runs.get(run_id)


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
