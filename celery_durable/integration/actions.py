"""Acting on runs from anywhere (a view, a command, a step).

The engine's operations wired to the current Celery app's registry and publisher; the
public facade (``api``) and the operator surfaces call these.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import current_app

from ..engine import cancel as cancelling
from ..engine import events
from ..engine import pause as pausing_engine
from ..exceptions import TaskNotRegistered
from ..models import Pause, Run
from ..runtime.events import Event
from ..store import explain as explaining
from ..store import pausing, runs
from ..store import replay as replaying
from ..store.explain import Explanation
from .registry import ports


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
