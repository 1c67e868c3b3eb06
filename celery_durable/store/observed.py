"""Rows of observed plain Celery tasks (``OBSERVE_PLAIN_TASKS``): one-step runs, ``durable=False``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from ..models import Run, Step
from ..states import RunStatus, StepStatus

OBSERVED_STEP = "run"


def _observed(run_id: str) -> Any:
    return Run.objects.filter(id=run_id, durable=False, parent__isnull=True)


def started_again(run_id: str) -> bool:
    """A retry of an observed task started: its run is ``running`` again (one UPDATE)."""
    updated: int = _observed(run_id).update(status=RunStatus.RUNNING, executions=F("executions") + 1)
    return updated == 1


def started(run_id: str, task_name: str, args_json: str, kwargs_json: str, now: datetime) -> None:
    """An observed task started: record its run (a redelivery counts another execution)."""
    try:
        with transaction.atomic():
            Run.objects.create(
                id=run_id,
                task_name=task_name,
                status=RunStatus.RUNNING,
                args=args_json,
                kwargs=kwargs_json,
                durable=False,
                executions=1,
                created_at=now,
                started_at=now,
            )
    except IntegrityError:  # the message was delivered again (its worker died)
        started_again(run_id)


def ended(
    run_id: str,
    status: RunStatus,
    result: str | None,
    error: str | None,
    attempts: int,
    started_at: datetime,
    now: datetime,
) -> None:
    """An observed task returned, raised or asked for a retry: its outcome and its step, in one commit."""
    step_status = StepStatus.COMPLETED if status == RunStatus.COMPLETED else StepStatus.FAILED
    with transaction.atomic():
        finished_at = None if status == RunStatus.QUEUED else now
        if not _observed(run_id).update(status=status, result=result, error=error, finished_at=finished_at):
            return
        if attempts > 1 and Step.objects.filter(run_id=run_id, step_id=OBSERVED_STEP).update(
            status=step_status, output=result, error=error, attempts=attempts, finished_at=now
        ):
            return
        Step.objects.create(
            run_id=run_id,
            step_id=OBSERVED_STEP,
            kind="run",
            status=step_status,
            output=result,
            error=error,
            attempts=attempts,
            started_at=started_at,
            finished_at=now,
        )
