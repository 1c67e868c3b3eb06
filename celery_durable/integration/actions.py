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
from ..exceptions import RunNotFound
from ..models import Run
from ..runtime.events import Event
from ..store import batches, runs
from ..store import replay as replaying
from .registry import ports


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
