"""Cancellation: of a waiting run at once, of an executing run at its next step boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from .. import clock, serialization, validation
from ..exceptions import RunNotFound, RunStateError
from ..models import Run
from ..states import FINISHED, RunStatus
from .messages import RunMessage
from .runs import OBSERVED, check_id
from .suspension import child_finished


@dataclass
class Cancellation:
    """What a cancel did: runs cancelled now, runs asked to stop, and messages to publish."""

    cancelled: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    messages: list[RunMessage] = field(default_factory=list)


def _error(reason: str) -> str:
    record = {"type": "RunCancelled", "module": "celery_durable.exceptions", "message": reason, "traceback": ""}
    return serialization.dumps(record, "cancellation")


def cancel(run_id: str, reason: str = "", using: str = "default") -> Cancellation:
    """Cancel a run and its unfinished children, in one transaction.

    Raises ``RunNotFound`` for an unknown id and ``RunStateError`` for a finished run.
    """
    validation.check_text(reason, f"cancel({run_id!r}): reason", optional=True)
    check_id(run_id)
    outcome = Cancellation()
    with transaction.atomic(using=using):
        _cancel(run_id, reason or "cancelled", outcome, using, top=True)
    return outcome


def _cancel(run_id: str, reason: str, outcome: Cancellation, using: str, top: bool) -> None:
    runs = Run.objects.using(using)
    now = clock.now()
    for _ in range(3):  # the status may change under us; each attempt is one compare-and-set
        row = runs.filter(id=run_id).values("status", "parent_id", "durable").first()
        if row is None:
            raise RunNotFound(run_id)
        status = row["status"]
        if top and not row["durable"] and row["parent_id"] is None:
            raise RunStateError(run_id, status, "cancel", OBSERVED)
        if status in FINISHED:
            if top:
                raise RunStateError(run_id, status, "cancel")
            return
        if status == RunStatus.RUNNING:
            if runs.filter(id=run_id, status=RunStatus.RUNNING).update(cancel_requested_at=now, cancel_reason=reason):
                outcome.requested.append(run_id)
                return
            continue
        done = runs.filter(id=run_id, status=status).update(
            status=RunStatus.CANCELLED,
            cancel_requested_at=now,
            cancel_reason=reason,
            error=_error(reason),
            finished_at=now,
            wake_at=None,
            waiting_for=None,
            lease_owner=None,
            lease_expires_at=None,
        )
        if done:
            outcome.cancelled.append(run_id)
            _after_cancel(run_id, row["parent_id"], reason, outcome, using)
            return
    raise RunStateError(run_id, "changing concurrently", "cancel")


def cancel_descendant(run_id: str, reason: str, outcome: Cancellation, using: str = "default") -> None:
    """Cancel a run as part of a larger cancellation (an event's ``cancel_on``): a finished run is skipped."""
    _cancel(run_id, reason, outcome, using, top=False)


def _after_cancel(run_id: str, parent_id: str | None, reason: str, outcome: Cancellation, using: str) -> None:
    for child in Run.objects.using(using).filter(parent_id=run_id).exclude(status__in=FINISHED):
        _cancel(child.id, f"parent {run_id} was cancelled", outcome, using, top=False)
    if parent_id is not None:
        message = child_finished(parent_id, using)
        if message is not None:
            outcome.messages.append(message)


def stop_at_boundary(run_id: str, generation: int, using: str = "default") -> Cancellation | None:
    """An executing run reached a step boundary with a cancellation requested: cancel it now."""
    outcome = Cancellation()
    now = clock.now()
    with transaction.atomic(using=using):
        # The read needs no fence: the UPDATE below is the fence, and nothing happens unless it changes the run.
        row = Run.objects.using(using).filter(id=run_id).values("parent_id", "cancel_reason").first()
        if row is None:
            return None
        reason = row["cancel_reason"] or "cancelled"
        stopped = (
            Run.objects.using(using)
            .filter(id=run_id, generation=generation, status=RunStatus.RUNNING)
            .update(
                status=RunStatus.CANCELLED,
                error=_error(reason),
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if stopped != 1:  # taken over between the read and the write: the new owner stops it
            return None
        outcome.cancelled.append(run_id)
        _after_cancel(run_id, row["parent_id"], reason, outcome, using)
    return outcome


def stop_abandoned(run_ids: list[str], using: str = "default") -> Cancellation:
    """Runs asked to stop whose worker died before it could: cancel them (inside the reaper's transaction)."""
    outcome = Cancellation()
    now = clock.now()
    for run_id in run_ids:
        row = (
            Run.objects.using(using)
            .filter(id=run_id, status=RunStatus.RUNNING)
            .values("parent_id", "cancel_reason")
            .first()
        )
        if row is None:
            continue
        reason = row["cancel_reason"] or "cancelled"
        stopped = (
            Run.objects.using(using)
            .filter(id=run_id, status=RunStatus.RUNNING)
            .update(
                status=RunStatus.CANCELLED,
                error=_error(reason),
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if stopped != 1:
            continue
        outcome.cancelled.append(run_id)
        _after_cancel(run_id, row["parent_id"], reason, outcome, using)
    return outcome


def take_timed_out(limit: int, using: str = "default") -> Cancellation:
    """Cancel runs past their ``Timeouts``: not started by ``start_by`` or not finished by ``finish_by``."""
    now = clock.now()
    outcome = Cancellation()
    # A running run already asked to stop is not asked again every tick.
    unfinished = Run.objects.using(using).exclude(status__in=FINISHED).filter(cancel_requested_at__isnull=True)
    late_finish = unfinished.filter(finish_by__lt=now).values_list("id", flat=True)[:limit]
    late_start = unfinished.filter(start_by__lt=now, started_at__isnull=True).values_list("id", flat=True)[:limit]
    for run_id, why in [*((r, "finish") for r in late_finish), *((r, "start") for r in late_start)]:
        try:
            with transaction.atomic(using=using):
                _cancel(run_id, f"timed out (Timeouts.{why})", outcome, using, top=True)
        except (RunStateError, RunNotFound):
            continue
    return outcome


def cancelled_rows(run_ids: list[str]) -> list[tuple[str, str, str | None, bool]]:
    """``(id, task name, reason, durable)`` of cancelled runs, for the result backend and signals."""
    rows = Run.objects.filter(id__in=run_ids).values_list("id", "task_name", "cancel_reason", "durable")
    return list(rows)
