"""Rows of ``ScheduleState``: one per scheduled task; a tick is claimed by one conditional UPDATE.

Whoever changes ``next_tick_at`` from the value it read owns the ticks up to it: the
services of every worker may try at once, exactly one UPDATE matches (rowcount 1), and
the runs of those ticks are recorded in the same transaction, so a crash in between
undoes the claim too.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction

from .. import clock, serialization
from ..models import Run, ScheduleState
from ..states import FINISHED, RunStatus
from .messages import RunMessage


def rows(task_names: list[str], using: str = "default") -> list[ScheduleState]:
    """The schedule rows of these tasks (one query)."""
    return list(ScheduleState.objects.using(using).filter(task_name__in=task_names))


def create(task_name: str, definition: str, next_tick_at: datetime, using: str = "default") -> ScheduleState | None:
    """Insert a schedule row; ``None`` if another process inserted it first."""
    try:
        with transaction.atomic(using=using):
            return ScheduleState.objects.using(using).create(
                task_name=task_name, definition=definition, next_tick_at=next_tick_at
            )
    except IntegrityError:
        return None


def redefine(row: ScheduleState, definition: str, next_tick_at: datetime, using: str = "default") -> bool:
    """A deploy changed the task's schedule: start over from the new one's next tick (compare-and-set)."""
    return bool(
        ScheduleState.objects.using(using)
        .filter(pk=row.pk, definition=row.definition)
        .update(definition=definition, next_tick_at=next_tick_at, buffered_tick_at=None)
    )


def claim(
    row: ScheduleState,
    *,
    next_tick_at: datetime | None,
    last_tick_at: datetime | None,
    last_run_id: str | None,
    buffered_tick_at: datetime | None,
    using: str = "default",
) -> bool:
    """Move the schedule on from the state ``row`` was read in; ``False`` if another process did first."""
    return bool(
        ScheduleState.objects.using(using)
        .filter(
            pk=row.pk,
            paused=False,
            definition=row.definition,
            next_tick_at=row.next_tick_at,
            buffered_tick_at=row.buffered_tick_at,
            last_run_id=row.last_run_id,
        )
        .update(
            next_tick_at=next_tick_at,
            last_tick_at=last_tick_at,
            last_run_id=last_run_id,
            buffered_tick_at=buffered_tick_at,
        )
    )


def is_unfinished(run_id: str | None, using: str = "default") -> bool:
    """Whether the run exists and has not finished."""
    if not run_id:
        return False
    return Run.objects.using(using).filter(id=run_id).exclude(status__in=list(FINISHED)).exists()


def exists(run_id: str, using: str = "default") -> bool:
    """Whether a run with this id was recorded."""
    return Run.objects.using(using).filter(id=run_id).exists()


def record_skipped(message: RunMessage, reason: str, using: str = "default") -> bool:
    """Record a tick that its overlap policy skipped as a ``skipped`` run; ``False`` if it exists already."""
    now = clock.now()
    error = {"type": "RunSkipped", "module": "celery_durable.exceptions", "message": reason, "traceback": ""}
    try:
        with transaction.atomic(using=using):
            Run.objects.using(using).create(
                id=message.run_id,
                task_name=message.task_name,
                status=RunStatus.SKIPPED,
                args=message.args,
                kwargs=message.kwargs,
                options=message.options,
                error=serialization.dumps(error, "error record"),
                created_at=now,
                finished_at=now,
            )
    except IntegrityError:
        return False
    return True


def set_last_run(task_name: str, run_id: str, tick: datetime, using: str = "default") -> None:
    """A run started by hand (trigger now) is the one the overlap policy looks at next."""
    ScheduleState.objects.using(using).filter(task_name=task_name).update(last_run_id=run_id, last_tick_at=tick)


def set_paused(task_name: str, paused: bool, next_tick_at: datetime | None = None, using: str = "default") -> bool:
    """Pause, or resume from ``next_tick_at`` (the ticks missed while paused are not fired)."""
    fields: dict[str, object] = {"paused": paused}
    if not paused:
        fields["next_tick_at"] = next_tick_at
    return bool(ScheduleState.objects.using(using).filter(task_name=task_name, paused=not paused).update(**fields))
