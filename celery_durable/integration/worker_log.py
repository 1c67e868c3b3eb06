"""Worker log lines that say what happened to a run when its Celery task ended without a result."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from .. import signals


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if isinstance(value, datetime) else str(value)


def _on_suspended(sender: str, run_id: str, task_name: str, **kw: Any) -> None:
    reason, step_id, wake_at = kw.get("reason"), kw.get("step_id"), kw.get("wake_at")
    if reason == "sleep":
        what = f"sleeping until {_when(wake_at)}"
    elif reason == "wait":
        what = f"waiting for event {kw.get('event')!r} until {_when(wake_at)}"
    else:
        count = kw.get("children")
        what = f"waiting for {count} child run{'' if count == 1 else 's'}"
        if wake_at is not None:
            what += f" until {_when(wake_at)}"
    TRANSITIONS.info(
        "durable run %s (%s): %s (step %r); no worker is held",
        run_id,
        task_name,
        what,
        step_id,
        extra={"run_id": run_id, "task_name": task_name, "step_id": step_id, "event": "run_suspended"},
    )


def _on_handed_off(sender: str, run_id: str, task_name: str, **kw: Any) -> None:
    TRANSITIONS.info(
        "durable run %s (%s): handed off inline by run %s, which freed its concurrency slot; executing it here",
        run_id,
        task_name,
        kw.get("from_run_id"),
        extra={"run_id": run_id, "task_name": task_name, "event": "run_handed_off"},
    )


def _on_recovered(sender: str, run_id: str, task_name: str, **kw: Any) -> None:
    TRANSITIONS.warning(
        "durable run %s (%s): its worker was lost (lease expired); requeued, it resumes after a lost worker "
        "from its last checkpoint",
        run_id,
        task_name,
        extra={"run_id": run_id, "task_name": task_name, "event": "run_recovered"},
    )


#: Where :func:`log_transitions` writes: the library's logger, which a worker's log shows.
TRANSITIONS = logging.getLogger("celery_durable")

_TRANSITION_RECEIVERS = {
    "run_suspended": _on_suspended,
    "run_handed_off": _on_handed_off,
    "run_recovered": _on_recovered,
}


def log_transitions() -> None:
    """Log, in plain words, what happened to a run when its Celery task ended without a result.

    Celery logs a suspended execution as a bare ``Task ... ignored``; these lines say
    "sleeping until ...", "waiting for event ...", "waiting for N child runs", "handed off
    inline" and "requeued ... after a lost worker". ``install(app)`` turns them on
    (idempotent); silence them with the ``celery_durable`` logger's level.
    """
    for name, receiver in _TRANSITION_RECEIVERS.items():
        getattr(signals, name).connect(receiver, weak=False, dispatch_uid=f"celery_durable.transitions.{name}")
