"""Observe before converting: plain Celery tasks recorded as one-step runs (opt-in).

With ``CELERY_DURABLE["OBSERVE_PLAIN_TASKS"]`` set to ``True`` (every plain task) or to a
list of task-name patterns (``fnmatch``, e.g. ``["shop.*"]``), each execution of a matching
plain task in a worker becomes a run in the same tables and admin as durable runs: its
arguments, status, attempts, duration, result or error, and one step named ``"run"``.

Recording is a side channel: it never changes what the task does, a recording error is
logged and swallowed, and nothing recorded is ever republished, reaped or replayed (an
observed run is ``durable=False`` without a parent; the sweeper, waker and reaper only act
on runs with a publication time, wake time or lease, which observed runs never have).
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from celery import signals
from django.conf import settings
from django.db import DatabaseError

from .. import clock, serialization
from ..conf import error_text_limit, get_settings
from ..engine.spec import TaskSpec
from ..runtime.errors import error_record
from ..states import RunStatus
from .publish import CHILD_HEADER

logger = logging.getLogger("celery_durable")

UNRECORDABLE = "<not JSON: not recorded>"
STARTED = "durable_observed_at"  # set on the task's request while it executes


def observed(task: Any) -> bool:
    """Whether this execution of ``task`` is to be recorded."""
    if task is None or isinstance(getattr(task, "durable_spec", None), TaskSpec):
        return False
    # Runs around every plain task of the project: a dict lookup when observing is off,
    # the validated settings only when it is on.
    if not (getattr(settings, "CELERY_DURABLE", None) or {}).get("OBSERVE_PLAIN_TASKS"):
        return False
    setting = get_settings().OBSERVE_PLAIN_TASKS
    name = str(getattr(task, "name", ""))
    if name.startswith("celery.") or (task.request.headers or {}).get(CHILD_HEADER):
        return False  # Celery's own tasks; plain children of durable runs are recorded already
    if isinstance(setting, tuple):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in setting)
    return True


def _json(value: Any, fallback: Any, where: str, limit: int) -> str:
    try:
        return serialization.dumps(value, where, limit)
    except Exception:  # pickled arguments, objects, oversized values: observing must not fail
        return serialization.dumps(fallback, where)


def on_prerun(
    sender: Any = None, task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **kw: Any
) -> None:
    """A plain task starts (or starts again after ``self.retry()``): its run is ``running``."""
    if not observed(task):
        return

    from ..store import observed as observed_runs  # needs Django's app registry: not at import time

    now = clock.now()
    setattr(task.request, STARTED, now)  # for the step's start, without reading it back
    try:
        if task.request.retries and observed_runs.started_again(task_id):
            return  # a retry: the run exists (one UPDATE)
        limit = get_settings().MAX_ARGUMENT_BYTES
        args_json = _json(list(args or ()), [UNRECORDABLE], f"arguments of {task.name}", limit)
        kwargs_json = _json(dict(kwargs or {}), {"arguments": UNRECORDABLE}, f"arguments of {task.name}", limit)
        observed_runs.started(task_id, task.name, args_json, kwargs_json, now)
    except DatabaseError:
        logger.warning("observing plain task %s[%s] failed; the task runs as usual", task.name, task_id, exc_info=True)


def on_postrun(
    sender: Any = None, task_id: str = "", task: Any = None, retval: Any = None, state: str = "", **kw: Any
) -> None:
    """A plain task returned, raised or asked for a retry: record the outcome and its step."""
    if not observed(task):
        return

    from ..store import observed as observed_runs

    now = clock.now()
    completed = state == "SUCCESS"
    status = {"SUCCESS": RunStatus.COMPLETED, "RETRY": RunStatus.QUEUED}.get(state, RunStatus.FAILED)
    limit = get_settings().MAX_STEP_OUTPUT_BYTES
    result = _json(retval, UNRECORDABLE, f"result of {task.name}", limit) if completed else None
    error = None
    if not completed:
        record = (
            error_record(retval, error_text_limit())
            if isinstance(retval, BaseException)
            else {"type": state, "message": str(retval)}
        )
        error = serialization.dumps(record, "error record")
    attempts = (task.request.retries or 0) + 1
    started_at = getattr(task.request, STARTED, None) or now
    try:
        observed_runs.ended(task_id, status, result, error, attempts, started_at, now)
    except DatabaseError:
        logger.warning("observing plain task %s[%s] failed; the task runs as usual", task.name, task_id, exc_info=True)


def connect() -> None:
    """Connect the observing signal handlers (``install(app)`` does it; they check the setting)."""
    signals.task_prerun.connect(on_prerun, weak=False, dispatch_uid="celery_durable.observe.prerun")
    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid="celery_durable.observe.postrun")
