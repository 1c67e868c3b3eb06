"""Forks: which checkpoints of a run a fork reuses, and the fork's link and copies.

A fork is a new run of the same task (its own id, arguments and flow control, recorded
like any call); in the same transaction as its row it gets ``forked_from`` and copies of
the original's completed checkpoints recorded before ``from_step``. The original is only
read.
"""

from __future__ import annotations

from django.db.models import Q

from .. import validation
from ..exceptions import RunStateError, StepNotFound
from ..models import Run, Step
from ..runtime.steps import BODY_STEP
from ..states import StepStatus
from .runs import OBSERVED, get


def plan(run_id: str, from_step: str | None, using: str = "default") -> tuple[Run, list[Step]]:
    """The original run and the checkpoints a fork from ``from_step`` reuses, in history order.

    Those are its completed steps recorded before ``from_step`` (all completed steps when
    ``from_step`` is ``None``). Raises ``RunNotFound``, ``StepNotFound`` for a step the run
    never recorded, and ``RunStateError`` for an observed plain Celery task.
    """
    run = get(run_id, using)
    if not run.durable:
        raise RunStateError(run_id, run.status, "fork", OBSERVED)
    steps = Step.objects.using(using).filter(run_id=run_id)
    if from_step is not None:
        anchor = None
        if isinstance(from_step, str) and validation.storable(from_step):
            anchor = steps.filter(step_id=from_step).exclude(step_id=BODY_STEP).first()
        if anchor is None:
            raise StepNotFound(run_id, str(from_step))
        steps = steps.filter(id__lt=anchor.id)
    kept = steps.filter(Q(status=StepStatus.COMPLETED) & ~Q(step_id=BODY_STEP)).order_by("id")
    return run, list(kept)


def attach(fork_id: str, original: Run, from_step: str | None, steps: list[Step], using: str = "default") -> None:
    """Link the fork to its original and give it copies of ``steps`` (inside the fork's transaction)."""
    Run.objects.using(using).filter(id=fork_id).update(forked_from_id=original.id, forked_at_step=from_step)
    Step.objects.using(using).bulk_create(
        [
            Step(
                run_id=fork_id,
                step_id=step.step_id,
                kind=step.kind,
                status=step.status,
                output=step.output,
                error=step.error,
                attempts=step.attempts,
                started_at=step.started_at,
                finished_at=step.finished_at,
            )
            for step in steps
        ]
    )
