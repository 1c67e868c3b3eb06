"""Run control and inspection: ``get_run`` and ``replay``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .dbcheck import translated

if TYPE_CHECKING:
    from .cancellation import Cancellation
    from .models import Run
    from .runtime.events import Event


@translated
def send_event(name: str, data: dict[str, Any] | None = None, *, id: str | None = None) -> Event:
    """Record an event; start ``on_event`` tasks, resume matching waits, apply ``cancel_on``.

    The same ``id`` within ``IDEMPOTENCY_WINDOW`` (24 h) does nothing twice.
    """
    from .events import send_event as send

    return send(name, data, id=id)


def get_run(run_id: str) -> Run:
    """The :class:`~celery_durable.models.Run` with this id, or raise ``RunNotFound``."""
    from . import runs

    return runs.get(run_id)


def replay(run_id: str, from_step: str | None = None) -> Run:
    """Run a failed or cancelled run again, keeping completed steps before ``from_step``.

    Raises ``RunNotFound`` for an unknown id and ``RunStateError`` for a run that is not
    failed or cancelled; nothing changes then.
    """
    from celery import current_app

    from . import runs
    from .integration.publish import publish_on_commit

    nudge = runs.replay(run_id, from_step)
    result = current_app.AsyncResult(run_id)
    with contextlib.suppress(NotImplementedError):
        result.forget()
    publish_on_commit(current_app, [nudge])
    return runs.get(run_id)


def cancel(run_id: str, reason: str = "") -> Run:
    """Cancel a run (and its unfinished children).

    A queued, sleeping or waiting run is cancelled at once; an executing run stops at its
    next step boundary. Raises ``RunNotFound`` for an unknown id and ``RunStateError`` for
    a run that already finished (nothing changes then).
    """
    from celery import current_app

    from . import cancellation, runs
    from .integration.publish import publish_all

    outcome = cancellation.cancel(run_id, reason)
    after_cancel(outcome)
    publish_all(current_app, outcome.nudges)
    return runs.get(run_id)


def after_cancel(outcome: Cancellation) -> None:
    """Tell the result backend (``.get()`` raises ``RunCancelled``) and signal receivers."""
    from celery import current_app

    from . import signals, slots
    from .exceptions import RunCancelled
    from .integration.publish import publish_all
    from .models import Run

    for run_id in outcome.cancelled:
        publish_all(current_app, slots.release(run_id))
    rows = Run.objects.filter(id__in=outcome.cancelled).values_list("id", "task_name", "cancel_reason", "durable")
    for run_id, task_name, reason, durable in rows:
        if durable:
            current_app.backend.mark_as_failure(run_id, RunCancelled(reason or "cancelled"))
        else:  # a plain Celery child: best effort, as Celery allows
            current_app.control.revoke(run_id)
        signals.send(signals.run_cancelled, task_name, run_id, reason=reason)
