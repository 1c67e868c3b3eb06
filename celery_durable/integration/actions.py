"""Acting on runs from anywhere (a view, a command, a step).

The engine's operations wired to the current Celery app's registry and publisher; the
public facade (``api``) and the operator surfaces call these.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import current_app

from ..engine import cancel as cancelling
from ..engine import events, limits
from ..engine.spec import TaskSpec
from ..exceptions import DurableConfigError
from ..models import Run
from ..runtime.events import Event
from ..store import replay as replaying
from ..store import runs
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
