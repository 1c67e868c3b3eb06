"""A run's record: create it at ``.delay()``, skip it, look it up.

Transitions that make a run runnable return its message; callers publish after commit.
How an execution ends the run (complete, fail, retry a step) is in :mod:`.endings`, the
claim and the heartbeat in :mod:`.claims`, the waker, sweeper and reaper in
:mod:`.recovery`, replay in :mod:`.replay`.
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connections, transaction

from .. import clock, serialization, validation
from ..exceptions import RunNotFound, TaskNotRegistered
from ..models import Run
from ..states import FINISHED, RunStatus
from . import inserts
from .messages import RunMessage


def create(
    *,
    run_id: str,
    task_name: str,
    args: str,
    kwargs: str,
    options: str,
    wake_at: datetime | None = None,
    deadlines: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    using: str = "default",
) -> bool:
    """Insert a queued run; ``False`` if a run with that id exists already."""
    now = clock.now()
    # A savepoint only inside a caller's transaction (where a failed INSERT would abort it);
    # in autocommit mode the INSERT is its own transaction: one round trip, not three.
    guard = transaction.atomic(using=using) if connections[using].in_atomic_block else nullcontext()
    try:
        with guard:
            fields: dict[str, Any] = {
                "id": run_id,
                "task_name": task_name,
                "args": args,
                "kwargs": kwargs,
                "options": options,
                "created_at": now,
                "status": RunStatus.QUEUED,
                "wake_at": wake_at,
                "published_at": None if wake_at else now,
                **(deadlines or {}),
                **(extra or {}),
            }
            inserts.insert_row(Run, fields, using)  # Run.objects.create() without its per-call compile
    except IntegrityError:
        if Run.objects.using(using).filter(id=run_id).exists():
            return False
        raise
    return True


def record_call(
    task_name: str,
    args: str,
    kwargs: str,
    options: str,
    *,
    run_id: str | None = None,
    deadlines: dict[str, Any] | None = None,
    using: str = "default",
) -> RunMessage | None:
    """Record a queued run and return its message; ``None`` if a run with that id exists already."""
    run_id = run_id or str(uuid.uuid4())
    created = create(
        run_id=run_id, task_name=task_name, args=args, kwargs=kwargs, options=options, deadlines=deadlines, using=using
    )
    return RunMessage(run_id, task_name, args, kwargs, options) if created else None


def record(
    message: RunMessage,
    *,
    wake_at: datetime | None = None,
    deadlines: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Insert the run a message describes (:func:`create`); ``False`` if it exists already."""
    return create(
        run_id=message.run_id,
        task_name=message.task_name,
        args=message.args,
        kwargs=message.kwargs,
        options=message.options,
        wake_at=wake_at,
        deadlines=deadlines,
        extra=extra,
    )


def _skip_error(reason: str) -> str:
    error = {"type": "RunSkipped", "module": "celery_durable.exceptions", "message": reason, "traceback": ""}
    return serialization.dumps(error, "error record")


def skip_pending(run_id: str, reason: str) -> bool:
    """End a run still waiting in a backlog as ``skipped`` (``Concurrency(when_full="skip")``)."""
    now = clock.now()
    return (
        Run.objects.filter(id=run_id, status=RunStatus.PENDING, holds_slots=False).update(
            status=RunStatus.SKIPPED, error=_skip_error(reason), finished_at=now
        )
        == 1
    )


def create_skipped(message: RunMessage, reason: str) -> None:
    """Record a run that flow control skipped at ``.delay()`` (status ``skipped``)."""
    now = clock.now()
    Run.objects.create(
        id=message.run_id,
        task_name=message.task_name,
        status=RunStatus.SKIPPED,
        args=message.args,
        kwargs=message.kwargs,
        options=message.options,
        error=_skip_error(reason),
        created_at=now,
        finished_at=now,
    )


MISSING = "missing"


def outcome_of(run_id: str, using: str = "default") -> tuple[str, Any]:
    """What a dropped delivery finds, in one query.

    ``(status, result or error record)`` of an ended run, ``(status, None)`` of an unfinished
    one, ``(MISSING, None)`` if there is no such run.
    """
    row = Run.objects.using(using).filter(id=run_id).values_list("status", "result", "error").first()
    if row is None:
        return MISSING, None
    status, result, error = row
    if status not in FINISHED:
        return status, None
    if status == RunStatus.COMPLETED:
        return status, None if result is None else serialization.loads(result)
    return status, None if error is None else serialization.loads(error)


def stopped_by_cancel(run_id: str, generation: int, using: str = "default") -> bool:
    """Whether a refused transition of ``generation`` means the run was cancelled meanwhile.

    ``False`` means another execution took the run over.
    """
    row = Run.objects.using(using).filter(id=run_id).values("generation", "cancel_requested_at").first()
    return row is not None and row["generation"] == generation and row["cancel_requested_at"] is not None


def fail_unregistered(run_id: str, task_name: str, using: str = "default") -> bool:
    """Fail a queued run whose task this deployment no longer has."""
    record = {
        "type": "TaskNotRegistered",
        "module": "celery_durable.exceptions",
        "message": str(TaskNotRegistered(task_name)),
        "traceback": "",
    }
    failed = (
        Run.objects.using(using)
        .filter(id=run_id, status=RunStatus.QUEUED)
        .update(status=RunStatus.FAILED, error=serialization.dumps(record, "error record"), finished_at=clock.now())
    )
    return failed == 1


# Why an observed plain task (OBSERVE_PLAIN_TASKS) cannot be replayed or cancelled.
OBSERVED = "it is an observed plain Celery task, not a durable run (convert the task to act on its runs)"


def check_id(run_id: str) -> None:
    """Raise :class:`RunNotFound` for an id no run can have (the database would refuse the query)."""
    if isinstance(run_id, str) and not validation.storable(run_id):
        raise RunNotFound(run_id)


def get(run_id: str, using: str = "default") -> Run:
    """The run with this id, or raise :class:`RunNotFound`."""
    check_id(run_id)
    try:
        return Run.objects.using(using).get(id=run_id)
    except Run.DoesNotExist:
        raise RunNotFound(run_id) from None
