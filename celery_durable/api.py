"""Run control and inspection: ``get_run`` and ``replay``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Run


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
