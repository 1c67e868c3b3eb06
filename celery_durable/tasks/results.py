"""A durable run as Django's ``TaskResult``: statuses, return value, errors, attempts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils.module_loading import import_string

from ..states import RunStatus
from .known import registered

if TYPE_CHECKING:
    from ..models import Run

# Our run statuses as Django's: a run that started and is suspended (a sleep, a wait, child
# runs) is RUNNING, its function has not returned; a run waiting for a slot or its start time
# (or queued again after a crash) is READY; cancelled and skipped runs FAILED, with their error.
STATUSES: dict[str, TaskResultStatus] = {
    RunStatus.PENDING: TaskResultStatus.READY,
    RunStatus.QUEUED: TaskResultStatus.READY,
    RunStatus.RUNNING: TaskResultStatus.RUNNING,
    RunStatus.SLEEPING: TaskResultStatus.RUNNING,
    RunStatus.WAITING: TaskResultStatus.RUNNING,
    RunStatus.COMPLETED: TaskResultStatus.SUCCESSFUL,
    RunStatus.FAILED: TaskResultStatus.FAILED,
    RunStatus.CANCELLED: TaskResultStatus.FAILED,
    RunStatus.SKIPPED: TaskResultStatus.FAILED,
    RunStatus.PAUSED: TaskResultStatus.READY,  # RUNNING once it started (below)
}


def task_of(path: str) -> Task[..., Any] | None:
    """The Django task with this module path (imported if this process has not seen it)."""
    task = registered(path)
    if task is not None:
        return task
    try:
        found = import_string(path)
    except ImportError:
        return None
    return found if isinstance(found, Task) else None


def error_of(record: dict[str, Any] | None) -> TaskError | None:
    """The stored ``{type, module, message, traceback}`` record as Django's ``TaskError``."""
    if not record:
        return None
    module = record.get("module") or "builtins"
    return TaskError(
        exception_class_path=f"{module}.{record.get('type', 'Exception')}", traceback=record.get("traceback") or ""
    )


def to_result(run: Run, alias: str, task: Task[..., Any] | None = None) -> TaskResult[..., Any]:
    """``run`` as a ``TaskResult`` (of ``task``, as enqueued); ``TaskResultDoesNotExist`` if no Django task's."""
    task = task or task_of(run.task_name)
    if task is None:
        raise TaskResultDoesNotExist(f"run {run.id} of {run.task_name!r} is not a run of a Django task")
    status = STATUSES[run.status]
    if run.status == RunStatus.PAUSED and run.started_at is not None:
        status = TaskResultStatus.RUNNING  # paused between two steps: its function has not returned
    error = error_of(run.error_value) if status == TaskResultStatus.FAILED else None
    # One entry per attempt: the first execution and one per recovery after a crash. The run
    # records only the worker holding its lease: every entry names it (or is "" when none is known).
    attempts = run.recoveries + 1 if run.executions else 0
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=run.id,
        status=status,
        enqueued_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        last_attempted_at=run.started_at,
        args=run.args_value,
        kwargs=run.kwargs_value,
        backend=alias,
        errors=[error] if error is not None else [],
        worker_ids=[run.lease_owner or ""] * attempts,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", run.result_value)
    return result


def running_context(path: str) -> TaskContext[..., Any]:
    """The ``TaskContext`` of the run executing now (``takes_context=True`` tasks)."""
    from ..runtime.context import current
    from ..store import runs

    task = task_of(path)
    assert task is not None  # the runner of a registered task asks
    return TaskContext(task_result=to_result(runs.get(current().run_id), task.backend))
