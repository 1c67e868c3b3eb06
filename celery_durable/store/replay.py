"""Replay: a failed or cancelled run queued again, keeping the checkpoints it may keep."""

from __future__ import annotations

from django.db import transaction

from .. import clock, validation
from ..exceptions import RunStateError, StepNotFound
from ..models import Run, Step
from ..states import REPLAYABLE, UNFINISHED, RunStatus, StepStatus
from .messages import RunMessage
from .runs import OBSERVED, get


def replay(run_id: str, from_step: str | None = None, using: str = "default") -> RunMessage:
    """Queue a failed or cancelled run again.

    Completed steps recorded before ``from_step`` are kept; ``from_step`` and every step
    recorded after it are deleted and run again. Without ``from_step`` every completed step
    is kept and the run resumes at the step that failed.
    """
    with transaction.atomic(using=using):
        run = get(run_id, using)
        if not run.durable and run.parent_id is None:
            raise RunStateError(run_id, run.status, "replay", OBSERVED)
        if run.status not in REPLAYABLE:
            raise RunStateError(run_id, run.status, "replay")
        steps = Step.objects.using(using).filter(run_id=run_id)
        if from_step is not None:
            anchor = steps.filter(step_id=from_step).first() if validation.storable(str(from_step)) else None
            if anchor is None:
                raise StepNotFound(run_id, from_step)
            steps.filter(id__gte=anchor.id).delete()
        steps.filter(status=StepStatus.FAILED).delete()
        # Suspensions in progress are re-entered afresh; children that did not complete run again.
        steps.filter(status=StepStatus.PENDING).delete()
        Run.objects.using(using).filter(parent_id=run_id).exclude(status=RunStatus.COMPLETED).exclude(
            status__in=UNFINISHED
        ).delete()
        now = clock.now()
        changed = (
            Run.objects.using(using)
            .filter(id=run_id, status=run.status)
            .update(
                status=RunStatus.QUEUED,
                error=None,
                result=None,
                finished_at=None,
                wake_at=None,
                published_at=now,
                recoveries=0,
                cancel_requested_at=None,
                cancel_reason=None,
                waiting_for=None,
                children_pending=0,
                start_by=None,
                finish_by=None,
            )
        )
        if changed != 1:
            raise RunStateError(run_id, "changed concurrently", "replay")
    return RunMessage(run.id, run.task_name, run.args, run.kwargs, run.options)
