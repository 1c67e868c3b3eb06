"""State transitions of suspension: sleeping, waiting for events, waiting for children.

Each function is one transaction of conditional UPDATEs, fenced by the generation the
suspending execution holds; what must be published afterwards is returned as messages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import F

from .. import clock, serialization
from ..models import Run, Step
from ..states import CHILD_ENDED, RunStatus, StepStatus
from .checkpoints import STEP_COLUMNS
from .messages import RunMessage
from .rows import message_for, queued_again

CHILD_NAMESPACE = uuid.UUID("6f1e4a52-3c51-4c1e-9d0e-2f0b8a0f5d11")


def _pending_step(run_id: str, step_id: str, kind: str, output: str, exists: bool, now: datetime, using: str) -> None:
    steps = Step.objects.using(using)
    if exists:
        steps.filter(run_id=run_id, step_id=step_id).update(output=output, finished_at=now)
    else:
        steps.create(
            run_id=run_id,
            step_id=step_id,
            kind=kind,
            status=StepStatus.PENDING,
            output=output,
            attempts=1,
            started_at=now,
            finished_at=now,
        )


def _leave_running(run_id: str, generation: int, using: str, releasing: bool = False, **fields: Any) -> int:
    """Leave ``running`` (fenced by the generation, refused once a cancel is requested).

    ``releasing``: the run also gives its concurrency slots back in this UPDATE (it must
    hold them); the caller hands them on in the same transaction (``slots.hand_on``).
    """
    held = Run.objects.using(using).filter(
        id=run_id, generation=generation, status=RunStatus.RUNNING, cancel_requested_at__isnull=True
    )
    if releasing:
        held = held.filter(holds_slots=True)
        fields["holds_slots"] = False
    return int(held.update(lease_owner=None, lease_expires_at=None, **fields))


def sleep(
    run_id: str,
    generation: int,
    step_id: str,
    output: str,
    wake_at: datetime,
    exists: bool,
    using: str = "default",
    releasing: bool = False,
) -> bool:
    """Suspend a run in ``step.sleep`` until ``wake_at``; ``False`` if it is no longer ours.

    ``releasing``: its slots too (see :func:`_leave_running`).
    """
    fields = {"status": RunStatus.SLEEPING, "wake_at": wake_at}
    return _suspend(run_id, generation, step_id, "sleep", output, exists, using, releasing, fields)


def wait(
    run_id: str,
    generation: int,
    step_id: str,
    output: str,
    event: str,
    wake_at: datetime,
    exists: bool,
    using: str = "default",
    releasing: bool = False,
) -> bool:
    """Suspend a run in ``step.wait_for_event`` until a matching event or ``wake_at`` (timeout).

    ``releasing``: its slots too (see :func:`_leave_running`).
    """
    fields = {"status": RunStatus.WAITING, "waiting_for": event, "wake_at": wake_at}
    return _suspend(run_id, generation, step_id, "wait", output, exists, using, releasing, fields)


def _suspend(
    run_id: str,
    generation: int,
    step_id: str,
    kind: str,
    output: str,
    exists: bool,
    using: str,
    releasing: bool,
    fields: dict[str, Any],
) -> bool:
    """Leave ``running`` with ``fields`` and record the pending step, in one transaction.

    On PostgreSQL, a step reached for the first time: one statement (:func:`_suspend_sql`).
    """
    now = clock.now()
    if not exists and connections[using].vendor == "postgresql":
        return _suspend_sql(run_id, generation, step_id, kind, output, using, releasing, fields, now) == 1
    with transaction.atomic(using=using):
        if _leave_running(run_id, generation, using, releasing, **fields) != 1:
            return False
        _pending_step(run_id, step_id, kind, output, exists, now, using)
    return True


def _suspend_sql(
    run_id: str,
    generation: int,
    step_id: str,
    kind: str,
    output: str,
    using: str,
    releasing: bool,
    fields: dict[str, Any],
    now: datetime,
) -> int:
    """The suspension as one statement (PostgreSQL): the step's INSERT reads the run's UPDATE.

    ``WITH s AS (UPDATE run … WHERE <fences> RETURNING 1) INSERT INTO step … SELECT … FROM s``:
    the pending step is written only if the run left ``running`` (the same fences as
    :func:`_leave_running`), and both or neither commit. Returns the rows inserted (0 or 1).
    """
    connection = connections[using]
    q = connection.ops.quote_name
    value = connection.ops.adapt_datetimefield_value
    changes = {**fields, **({"holds_slots": False} if releasing else {})}
    assignments = "".join(f", {q(name)} = %s" for name in changes)
    held = f" AND {q('holds_slots')} = %s" if releasing else ""
    sql = (
        f"WITH s AS (UPDATE {q(Run._meta.db_table)} SET {q('lease_owner')} = NULL, "
        f"{q('lease_expires_at')} = NULL{assignments} "
        f"WHERE {q('id')} = %s AND {q('generation')} = %s AND {q('status')} = %s "
        f"AND {q('cancel_requested_at')} IS NULL{held} RETURNING 1) "
        f"INSERT INTO {q(Step._meta.db_table)} ({', '.join(q(c) for c in STEP_COLUMNS)}) "
        f"SELECT {', '.join(['%s'] * len(STEP_COLUMNS))} FROM s"
    )
    params = [
        *(value(v) if isinstance(v, datetime) else v for v in changes.values()),
        run_id,
        generation,
        RunStatus.RUNNING,
        *([True] if releasing else []),
        run_id,
        step_id,
        kind,
        StepStatus.PENDING,
        output,
        1,
        value(now),
        value(now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def resolve_wait(run_id: str, step_id: str, event: dict[str, Any], using: str = "default") -> RunMessage | None:
    """Give a waiting run its event: complete the wait step and queue the run (compare-and-set).

    ``None`` if the run is no longer waiting there (another event or its timeout won).
    """
    now = clock.now()
    with transaction.atomic(using=using):
        step = (
            Step.objects.using(using)
            .filter(run_id=run_id, step_id=step_id, kind="wait", status=StepStatus.PENDING)
            .first()
        )
        if step is None:
            return None
        state = serialization.loads(step.output or "{}")
        output = serialization.dumps({**state, "event": event}, f"wait {step_id!r}")
        resumed = Run.objects.using(using).filter(id=run_id, status=RunStatus.WAITING).update(**queued_again(now))
        if resumed != 1:
            return None
        Step.objects.using(using).filter(id=step.id, status=StepStatus.PENDING).update(
            status=StepStatus.COMPLETED, output=output, finished_at=now
        )
        return message_for(run_id, using)


def child_id(run_id: str, step_id: str, index: int) -> str:
    """The deterministic id of a step's child run (the same on every replay)."""
    return str(uuid.uuid5(CHILD_NAMESPACE, f"{run_id}/{step_id}/{index}"))


@dataclass
class ChildrenRecorded:
    """What recording a step's children did.

    The children to publish, and the parent's message when none is left to wait for (all
    completed in an earlier attempt).
    """

    created: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    resume: RunMessage | None = None


def children(
    run_id: str,
    generation: int,
    step_id: str,
    kind: str,
    specs: list[dict[str, Any]],
    durable: list[bool],
    output: str,
    wake_at: datetime | None,
    using: str = "default",
) -> ChildrenRecorded | None:
    """Record a step's child runs and suspend the parent until they finish.

    Returns the ``(child id, spec, durable)`` of each child to publish after commit (and the
    parent's own message if it has nothing to wait for), or ``None`` if the parent is no
    longer ours.
    """
    now = clock.now()
    recorded = ChildrenRecorded()
    with transaction.atomic(using=using):
        # Children of an earlier attempt that completed already (a replay) are not waited for.
        ids = [child_id(run_id, step_id, i) for i in range(len(specs))]
        done = Run.objects.using(using).filter(id__in=ids, status=RunStatus.COMPLETED).count()
        pending = len(specs) - done
        fields: dict[str, Any] = {"status": RunStatus.WAITING, "wake_at": wake_at, "children_pending": pending}
        if not pending:
            fields = {"status": RunStatus.QUEUED, "wake_at": None, "children_pending": 0, "published_at": now}
        if _leave_running(run_id, generation, using, **fields) != 1:
            return None
        _pending_step(run_id, step_id, kind, output, False, now, using)
        for index, (spec, is_durable) in enumerate(zip(specs, durable, strict=True)):
            cid = child_id(run_id, step_id, index)
            if not is_durable:
                # A plain task reports its end through this header (see integration.install).
                headers = {**(spec["options"].get("headers") or {}), "durable_parent": run_id}
                spec = {**spec, "options": {**spec["options"], "headers": headers}}
            try:
                with transaction.atomic(using=using):
                    Run.objects.using(using).create(
                        id=cid,
                        task_name=spec["task"],
                        status=RunStatus.QUEUED,
                        args=serialization.dumps(spec["args"], "child arguments"),
                        kwargs=serialization.dumps(spec["kwargs"], "child arguments"),
                        options=serialization.dumps(spec["options"], "child options"),
                        parent_id=run_id,
                        parent_step=step_id,
                        child_index=index,
                        durable=is_durable,
                        published_at=now,
                        created_at=now,
                    )
            except IntegrityError:
                continue  # created by an earlier attempt of this step
            recorded.created.append((cid, spec, is_durable))
        if not pending:
            recorded.resume = message_for(run_id, using)
    return recorded


def children_of(run_id: str, step_id: str, using: str = "default") -> list[dict[str, Any]]:
    """A step's child runs in order: ``{id, status, result, error}`` (one query)."""
    rows = (
        Run.objects.using(using)
        .filter(parent_id=run_id, parent_step=step_id)
        .order_by("child_index")
        .values_list("id", "status", "result", "error")
    )
    return [
        {
            "id": cid,
            "status": status,
            "result": None if result is None else serialization.loads(result),
            "error": None if error is None else serialization.loads(error),
        }
        for cid, status, result, error in rows
    ]


def child_finished(parent_id: str, using: str = "default") -> RunMessage | None:
    """Count a finished child; when it was the last, queue the parent. Call inside the child's transaction."""
    parents = Run.objects.using(using).filter(id=parent_id, status=RunStatus.WAITING, waiting_for__isnull=True)
    parents.filter(children_pending__gt=0).update(children_pending=F("children_pending") - 1)
    resumed = parents.filter(children_pending=0).update(status=RunStatus.QUEUED, wake_at=None, published_at=clock.now())
    return message_for(parent_id, using) if resumed == 1 else None


def finish_plain_child(
    run_id: str, completed: bool, result: str | None, error: str | None, using: str = "default"
) -> RunMessage | None:
    """A plain Celery task that ran as a child finished: record it and maybe resume its parent."""
    now = clock.now()
    with transaction.atomic(using=using):
        child = Run.objects.using(using).filter(id=run_id, durable=False).values("parent_id", "status").first()
        if child is None or child["status"] in CHILD_ENDED:
            return None
        Run.objects.using(using).filter(id=run_id).update(
            status=RunStatus.COMPLETED if completed else RunStatus.FAILED,
            result=result,
            error=error,
            finished_at=now,
        )
        return child_finished(child["parent_id"], using) if child["parent_id"] else None


def mark_plain_child_started(run_id: str, using: str = "default") -> None:
    """A plain child began executing (status ``running``, for the admin)."""
    Run.objects.using(using).filter(id=run_id, durable=False, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=clock.now(), executions=F("executions") + 1
    )


def wait_again(run_id: str, generation: int, wake_at: datetime | None, using: str = "default") -> bool:
    """Children still running (woken early): suspend the parent again."""
    return _leave_running(run_id, generation, using, status=RunStatus.WAITING, wake_at=wake_at) == 1
