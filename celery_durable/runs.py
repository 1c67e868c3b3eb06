"""The run state machine: every status transition, each one conditional UPDATE.

This module knows nothing of Celery. Transitions that make a run runnable return what
must be published; callers publish after commit (:mod:`celery_durable.integration.publish`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce

from . import clock, serialization, validation
from .exceptions import RunNotFound, RunStateError, StepNotFound
from .models import FINISHED_STATUSES, Run, RunStatus, Step, StepStatus
from .runtime.steps import StoredStep


@dataclass(frozen=True)
class Nudge:
    """A message to publish for a runnable run (after the transaction commits)."""

    run_id: str
    task_name: str
    args: str
    kwargs: str
    options: str
    countdown: float | None = None
    # When set, the countdown is taken from this time at publish (not from when the nudge was
    # made): a batch of due runs takes a while to publish, and its late messages would
    # otherwise be late by that much.
    due_at: datetime | None = None


@dataclass
class Claim:
    """What an execution holds after claiming a run."""

    run: Run
    generation: int
    checkpoints: dict[str, StoredStep]


def nudge_for(run_id: str, using: str = "default") -> Nudge:
    """The nudge that publishes ``run_id`` (one query)."""
    row = Run.objects.using(using).values_list("id", "task_name", "args", "kwargs", "options").get(id=run_id)
    return Nudge(*row)


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
                "status": RunStatus.QUEUED,
                "wake_at": wake_at,
                "published_at": None if wake_at else now,
                **(deadlines or {}),
                **(extra or {}),
            }
            Run.objects.using(using).create(
                id=run_id, task_name=task_name, args=args, kwargs=kwargs, options=options, created_at=now, **fields
            )
    except IntegrityError:
        if Run.objects.using(using).filter(id=run_id).exists():
            return False
        raise
    return True


def create_skipped(*, run_id: str, task_name: str, args: str, kwargs: str, options: str, reason: str) -> None:
    """Record a run that flow control skipped at ``.delay()`` (status ``skipped``)."""
    now = clock.now()
    error = {"type": "RunSkipped", "module": "celery_durable.exceptions", "message": reason, "traceback": ""}
    Run.objects.create(
        id=run_id,
        task_name=task_name,
        status=RunStatus.SKIPPED,
        args=args,
        kwargs=kwargs,
        options=options,
        error=serialization.dumps(error, "error record"),
        created_at=now,
        finished_at=now,
    )


def claim(run_id: str, owner: str, lease_seconds: float, using: str = "default") -> Claim | None:
    """Take the run's lease with one compare-and-set; ``None`` if it is not ours to run.

    Runnable means: queued and due, or running with an expired lease (its worker died).
    Zero rows changed means a duplicate or stale message: the caller drops it.
    """
    now = clock.now()
    if _can_update_returning(using):
        run = _claim_returning(run_id, owner, now, now + timedelta(seconds=lease_seconds), using)
        if run is None:
            return None
        loaded = load_checkpoints(run_id, using) if run.executions > 1 else {}
        return Claim(run=run, generation=run.generation, checkpoints=loaded)
    runs = Run.objects.using(using)
    claimed = runs.filter(
        Q(id=run_id)
        & (
            (Q(status=RunStatus.QUEUED) & (Q(wake_at__isnull=True) | Q(wake_at__lte=now)))
            | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
        )
    ).update(
        status=RunStatus.RUNNING,
        generation=F("generation") + 1,
        executions=F("executions") + 1,
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        wake_at=None,
        started_at=Coalesce(F("started_at"), now),
    )
    if claimed != 1:
        return None
    run = runs.get(id=run_id)
    checkpoints: dict[str, StoredStep] = {}
    if run.executions > 1:
        checkpoints = load_checkpoints(run_id, using)
    return Claim(run=run, generation=run.generation, checkpoints=checkpoints)


def _can_update_returning(using: str) -> bool:
    connection = connections[using]
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        from sqlite3 import sqlite_version_info

        return sqlite_version_info >= (3, 35)
    return False  # MySQL/MariaDB: UPDATE ... RETURNING is not available


_RETURNED = ("task_name", "args", "kwargs", "generation", "executions", "parent_id", "holds_slots", "started_at")


def _claim_returning(run_id: str, owner: str, now: datetime, lease_until: datetime, using: str) -> Run | None:
    """The claim as one ``UPDATE ... RETURNING`` (PostgreSQL, SQLite): no read after it.

    The same compare-and-set as the ORM path in :func:`claim`, which MySQL uses.
    """
    connection = connections[using]
    q = connection.ops.quote_name
    table = q(Run._meta.db_table)
    value = connection.ops.adapt_datetimefield_value
    sql = (
        f"UPDATE {table} SET {q('status')} = %s, {q('generation')} = {q('generation')} + 1, "
        f"{q('executions')} = {q('executions')} + 1, {q('lease_owner')} = %s, {q('lease_expires_at')} = %s, "
        f"{q('wake_at')} = NULL, {q('started_at')} = COALESCE({q('started_at')}, %s) "
        f"WHERE {q('id')} = %s AND (({q('status')} = %s AND ({q('wake_at')} IS NULL OR {q('wake_at')} <= %s)) "
        f"OR ({q('status')} = %s AND {q('lease_expires_at')} < %s)) "
        f"RETURNING {', '.join(q(c) for c in _RETURNED)}"
    )
    params = [
        RunStatus.RUNNING,
        owner,
        value(lease_until),
        value(now),
        run_id,
        RunStatus.QUEUED,
        value(now),
        RunStatus.RUNNING,
        value(now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    task_name, args, kwargs, generation, executions, parent_id, holds_slots, started_at = row
    if isinstance(started_at, str):  # SQLite may return text
        from django.utils.dateparse import parse_datetime

        started_at = parse_datetime(started_at)
    if isinstance(started_at, datetime) and started_at.tzinfo is None and now.tzinfo is not None:
        started_at = started_at.replace(tzinfo=now.tzinfo)  # SQLite stores UTC without an offset
    return Run(
        started_at=started_at,
        holds_slots=bool(holds_slots),
        id=run_id,
        task_name=task_name,
        args=args,
        kwargs=kwargs,
        generation=generation,
        executions=executions,
        parent_id=parent_id,
        status=RunStatus.RUNNING,
    )


def load_checkpoints(run_id: str, using: str = "default") -> dict[str, StoredStep]:
    """All checkpoints of a run, in one query."""
    rows = (
        Step.objects.using(using).filter(run_id=run_id).values_list("step_id", "kind", "status", "output", "attempts")
    )
    return {row[0]: StoredStep(*row) for row in rows}


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
    if status not in FINISHED_STATUSES:
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


def _held(run_id: str, generation: int, using: str) -> QuerySet[Run]:
    return Run.objects.using(using).filter(id=run_id, generation=generation, status=RunStatus.RUNNING)


def complete(
    run_id: str, generation: int, result: str, parent_id: str | None = None, using: str = "default"
) -> Nudge | bool | None:
    """Finish a run with its JSON result; ``False`` if the execution no longer holds it.

    A child run also counts itself done in its parent, and returns the parent's nudge
    when it was the last child.
    """
    fields: dict[str, Any] = {
        "status": RunStatus.COMPLETED,
        "result": result,
        "finished_at": clock.now(),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if parent_id is None:
        return None if _complete_sql(run_id, generation, result, using) == 1 else False
    from .suspend import child_finished

    with transaction.atomic(using=using):
        if _held(run_id, generation, using).update(**fields) != 1:
            return False
        return child_finished(parent_id, using)


def _complete_sql(run_id: str, generation: int, result: str, using: str) -> int:
    """The completion as one UPDATE statement: the hot path of every run, so no ORM layers."""
    connection = connections[using]
    q = connection.ops.quote_name
    sql = (
        f"UPDATE {q(Run._meta.db_table)} SET {q('status')} = %s, {q('result')} = %s, {q('finished_at')} = %s, "
        f"{q('lease_owner')} = NULL, {q('lease_expires_at')} = NULL "
        f"WHERE {q('id')} = %s AND {q('generation')} = %s AND {q('status')} = %s"
    )
    params = [
        RunStatus.COMPLETED,
        result,
        connection.ops.adapt_datetimefield_value(clock.now()),
        run_id,
        generation,
        RunStatus.RUNNING,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def fail(
    run_id: str,
    generation: int,
    error: dict[str, Any],
    step: tuple[str, int] | None = None,
    parent_id: str | None = None,
    using: str = "default",
) -> Nudge | bool | None:
    """Fail a run (recording the failed step, if any) in one transaction.

    ``False`` if the execution no longer holds the run; a child run returns its parent's
    nudge when it was the last child.
    """
    now = clock.now()
    error_json = serialization.dumps(error, "error record")
    with transaction.atomic(using=using):
        failed = _held(run_id, generation, using).update(
            status=RunStatus.FAILED,
            error=error_json,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        if failed != 1:
            return False
        if step is not None:
            _record_step_failure(run_id, step[0], step[1], error_json, now, using)
        if parent_id is not None:
            from .suspend import child_finished

            return child_finished(parent_id, using)
    return None


def retry_step(
    run_id: str,
    generation: int,
    step_id: str,
    attempts: int,
    error: dict[str, Any],
    delay: float,
    publish_within: float,
    using: str = "default",
) -> Nudge | bool | None:
    """Record a failed attempt and queue the run again after ``delay`` seconds.

    Delays up to ``publish_within`` go to the broker as a short countdown; longer ones wait
    in the database for the waker. Returns the nudge to publish, ``None`` when the waker
    will publish it, or ``False`` if the execution no longer holds the run.
    """
    now = clock.now()
    error_json = serialization.dumps(error, "error record")
    wake_at = now + timedelta(seconds=delay)
    short = delay <= publish_within
    with transaction.atomic(using=using):
        queued = (
            _held(run_id, generation, using)
            .filter(cancel_requested_at__isnull=True)
            .update(
                status=RunStatus.QUEUED,
                wake_at=None if short else wake_at,
                published_at=now if short else None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if queued != 1:
            return False
        _record_step_failure(run_id, step_id, attempts, error_json, now, using)
        if not short:
            return None
        run = Run.objects.using(using).only("task_name", "args", "kwargs", "options").get(id=run_id)
    return Nudge(run_id, run.task_name, run.args, run.kwargs, run.options, countdown=delay or None)


def _record_step_failure(run_id: str, step_id: str, attempts: int, error_json: str, now: datetime, using: str) -> None:
    steps = Step.objects.using(using)
    updated = steps.filter(run_id=run_id, step_id=step_id).update(
        status=StepStatus.FAILED, error=error_json, attempts=attempts, finished_at=now
    )
    if not updated:
        steps.create(
            run_id=run_id,
            step_id=step_id,
            status=StepStatus.FAILED,
            error=error_json,
            attempts=attempts,
            started_at=now,
            finished_at=now,
        )


def extend_leases(owner: str, run_ids: list[str], lease_seconds: float, using: str = "default") -> set[str]:
    """Heartbeat: push the lease of runs this worker executes further out.

    Returns the ids among them whose cancellation was requested.
    """
    if not run_ids:
        return set()
    held = Run.objects.using(using).filter(id__in=run_ids, lease_owner=owner, status=RunStatus.RUNNING)
    held.update(lease_expires_at=clock.now() + timedelta(seconds=lease_seconds))
    return set(held.filter(cancel_requested_at__isnull=False).values_list("id", flat=True))


def _locked_ids(queryset: Any, limit: int, using: str) -> list[str]:
    from django.db import connections

    features = connections[using].features
    if features.has_select_for_update_skip_locked:
        queryset = queryset.select_for_update(skip_locked=True)
    return list(queryset.values_list("id", flat=True)[:limit])


def _nudges(ids: list[str], using: str) -> list[Nudge]:
    rows = Run.objects.using(using).filter(id__in=ids).values_list("id", "task_name", "args", "kwargs", "options")
    return [Nudge(*row) for row in rows]


# Statuses a wake time can move to `queued` (the waker): a countdown, a sleep, a wait timeout.
WAKEABLE = (RunStatus.QUEUED, RunStatus.SLEEPING, RunStatus.WAITING)


def take_due(limit: int, horizon: float = 0.0, using: str = "default") -> list[Nudge]:
    """Runs whose wake time comes within ``horizon`` seconds: queue them and return their nudges.

    A run due in the future gets a broker countdown of at most ``horizon`` seconds.
    """
    now = clock.now()
    until = now + timedelta(seconds=horizon)
    with transaction.atomic(using=using):
        due = Run.objects.using(using).filter(status__in=WAKEABLE, wake_at__lte=until).order_by("wake_at")
        ids = _locked_ids(due, limit, using)
        if not ids:
            return []
        candidates = Run.objects.using(using).filter(id__in=ids, status__in=WAKEABLE, wake_at__lte=until)
        rows = {run_id: wake_at or now for run_id, wake_at in candidates.values_list("id", "wake_at")}
        Run.objects.using(using).filter(id__in=list(rows), status__in=WAKEABLE, wake_at__lte=until).update(
            status=RunStatus.QUEUED, wake_at=None, waiting_for=None, published_at=now
        )
        return [
            Nudge(n.run_id, n.task_name, n.args, n.kwargs, n.options, _countdown(rows[n.run_id], now), rows[n.run_id])
            for n in _nudges(list(rows), using)
        ]


def work_pending(horizon: float, republish_after: float, using: str = "default") -> bool:
    """Whether the waker, the timeouts, the sweeper or the reaper has anything to do now.

    One round trip of index probes, so that an idle tick costs one query whatever the size
    of the tables.
    """
    now = clock.now()
    runs = Run.objects.using(using)
    unfinished = runs.exclude(status__in=FINISHED_STATUSES).filter(cancel_requested_at__isnull=True)
    # Each probe is a scalar subquery ordered like the query it stands for, so that it reads
    # the same index (PostgreSQL drops ORDER BY and LIMIT inside EXISTS, and then may scan
    # the table when it expects many matches).
    probes = [
        runs.filter(status__in=WAKEABLE, wake_at__lte=now + timedelta(seconds=horizon)).order_by("wake_at"),
        runs.filter(
            status=RunStatus.QUEUED, wake_at__isnull=True, published_at__lt=now - timedelta(seconds=republish_after)
        ).order_by("published_at"),
        runs.filter(status=RunStatus.RUNNING, lease_expires_at__lt=now).order_by("lease_expires_at"),
        unfinished.filter(finish_by__lt=now).order_by("finish_by"),
        unfinished.filter(start_by__lt=now, started_at__isnull=True).order_by("start_by"),
    ]
    parts, params = [], []
    for probe in probes:
        sql, probe_params = probe.values("id")[:1].query.get_compiler(using).as_sql()
        parts.append(f"({sql}) IS NOT NULL")
        params.extend(probe_params)
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT " + " OR ".join(parts), params)
        row = cursor.fetchone()
    return bool(row and row[0])


def _countdown(wake_at: datetime, now: datetime) -> float | None:
    seconds = (wake_at - now).total_seconds()
    return seconds if seconds > 0.001 else None


def take_unpublished(republish_after: float, limit: int, using: str = "default") -> list[Nudge]:
    """Queued runs whose message may have been lost (commit then crash, broker restart)."""
    now = clock.now()
    stale = now - timedelta(seconds=republish_after)
    with transaction.atomic(using=using):
        lost = (
            Run.objects.using(using)
            .filter(status=RunStatus.QUEUED, wake_at__isnull=True, published_at__lt=stale)
            .order_by("published_at")
        )
        ids = _locked_ids(lost, limit, using)
        if not ids:
            return []
        Run.objects.using(using).filter(id__in=ids, status=RunStatus.QUEUED, published_at__lt=stale).update(
            published_at=now
        )
        return _nudges(ids, using)


@dataclass
class Reaped:
    """What the reaper did: runs to publish again, runs failed for good, runs cancelled."""

    nudges: list[Nudge]
    failed: list[str]
    cancelled: list[str]


def take_expired(max_recoveries: int, limit: int, using: str = "default") -> Reaped:
    """Reaper: requeue runs whose lease expired (their worker died).

    A run whose worker died more than ``max_recoveries`` times fails (a task that kills its
    worker every time); one whose cancellation was requested is cancelled, not requeued.
    """
    now = clock.now()
    with transaction.atomic(using=using):
        expired = (
            Run.objects.using(using)
            .filter(status=RunStatus.RUNNING, lease_expires_at__lt=now)
            .order_by("lease_expires_at")
        )
        ids = _locked_ids(expired, limit, using)
        if not ids:
            return Reaped([], [], [])
        runs = Run.objects.using(using).filter(id__in=ids, status=RunStatus.RUNNING, lease_expires_at__lt=now)
        from .cancellation import stop_abandoned

        stopping = list(runs.filter(cancel_requested_at__isnull=False).values_list("id", flat=True))
        stopped = stop_abandoned(stopping, using)
        runs = runs.exclude(id__in=stopping)
        ids = [run_id for run_id in ids if run_id not in stopping]
        doomed = list(runs.filter(recoveries__gte=max_recoveries).values_list("id", flat=True))
        parents = list(runs.filter(id__in=doomed, parent_id__isnull=False).values_list("parent_id", flat=True))
        if doomed:
            error = serialization.dumps(
                {
                    "type": "WorkerLost",
                    "module": "celery_durable.exceptions",
                    "message": f"the run's worker was lost {max_recoveries + 1} times; giving up "
                    f"(CELERY_DURABLE['MAX_RECOVERIES'])",
                    "traceback": "",
                },
                "error record",
            )
            runs.filter(id__in=doomed).update(
                status=RunStatus.FAILED, error=error, finished_at=now, lease_owner=None, lease_expires_at=None
            )
        requeue = [run_id for run_id in ids if run_id not in doomed]
        runs.filter(id__in=requeue).update(
            status=RunStatus.QUEUED,
            recoveries=F("recoveries") + 1,
            lease_owner=None,
            lease_expires_at=None,
            published_at=now,
        )
        from .suspend import child_finished

        resumed = [child_finished(parent, using) for parent in parents]
        nudges = _nudges(requeue, using) + [n for n in resumed if n is not None] + stopped.nudges
        return Reaped(nudges, doomed, stopped.cancelled)


def fail_unregistered(run_id: str, task_name: str, using: str = "default") -> bool:
    """Fail a queued run whose task this deployment no longer has."""
    from .exceptions import TaskNotRegistered

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


REPLAYABLE = (RunStatus.FAILED, RunStatus.CANCELLED)
# Why an observed plain task (OBSERVE_PLAIN_TASKS) cannot be replayed or cancelled.
OBSERVED = "it is an observed plain Celery task, not a durable run (convert the task to act on its runs)"


def replay(run_id: str, from_step: str | None = None, using: str = "default") -> Nudge:
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
            status__in=(RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING, RunStatus.PENDING)
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
    return Nudge(run.id, run.task_name, run.args, run.kwargs, run.options)


def is_finished(status: str) -> bool:
    """Whether ``status`` is terminal."""
    return status in FINISHED_STATUSES
