"""Claiming a run: the execution's lease, its generation and its checkpoints; the heartbeat.

A claim is one compare-and-set (``UPDATE ... RETURNING`` where the database has it): the
run must be queued and due, or running with an expired lease, and not paused. On PostgreSQL
the same statement reads the run's checkpoints. The
heartbeat pushes the leases of the runs a worker executes further out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from sqlite3 import sqlite_version_info
from typing import Any

from django.db import connections
from django.db.models import Exists, F, Q
from django.db.models.functions import Coalesce
from django.utils.dateparse import parse_datetime

from .. import clock
from ..models import Run, Step
from ..runtime.records import StoredStep
from ..states import RunStatus
from .compiled import CompiledSelect
from .messages import RunMessage
from .pausing import covering_pauses, not_paused_sql


@dataclass
class Claim:
    """What an execution holds after claiming a run."""

    run: Run
    generation: int
    checkpoints: dict[str, StoredStep]


def claim(run_id: str, owner: str, lease_seconds: float, using: str = "default") -> Claim | None:
    """Take the run's lease with one compare-and-set; ``None`` if it is not ours to run.

    Runnable means: queued and due, or running with an expired lease (its worker died), and
    not covered by a pause of its task or key (:mod:`.pausing`). Zero rows changed means a
    duplicate or stale message (or a paused run): the caller drops it.
    """
    now = clock.now()
    if _can_update_returning(using):
        returned = _claim_returning(run_id, owner, now, now + timedelta(seconds=lease_seconds), using)
        if returned is None:
            return None
        run, loaded = returned
        if loaded is None:  # SQLite, or very large outputs: the checkpoints in a query of their own
            loaded = _read_checkpoints(run, using)
        return Claim(run=run, generation=run.generation, checkpoints=loaded)
    runs = Run.objects.using(using)
    claimed = runs.filter(
        Q(id=run_id)
        & (
            (Q(status=RunStatus.QUEUED) & (Q(wake_at__isnull=True) | Q(wake_at__lte=now)))
            | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
        )
        & ~Exists(covering_pauses())
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
    return Claim(run=run, generation=run.generation, checkpoints=_read_checkpoints(run, using))


def handed_over(message: RunMessage, using: str = "default") -> Claim:
    """The claim a hand-over took for this process (``RunMessage.claimed``), as :func:`claim` returns it."""
    assert message.claimed is not None
    run = Run(
        id=message.run_id,
        task_name=message.task_name,
        args=message.args,
        kwargs=message.kwargs,
        status=RunStatus.RUNNING,
        holds_slots=True,
        **asdict(message.claimed),  # its fields are the run's columns
    )
    return Claim(run=run, generation=run.generation, checkpoints=_read_checkpoints(run, using))


def _read_checkpoints(run: Run, using: str) -> dict[str, StoredStep]:
    """The run's checkpoints, read only if it may have any: executed before, or a fork (it starts with copies)."""
    return load_checkpoints(run.id, using) if run.executions > 1 or run.forked_from_id is not None else {}


def _can_update_returning(using: str) -> bool:
    connection = connections[using]
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        return sqlite_version_info >= (3, 35)
    return False  # MySQL/MariaDB: UPDATE ... RETURNING is not available


#: PostgreSQL: a claim reads the run's checkpoints in its own statement, as one JSON value,
#: while their outputs add up to at most this many bytes (escaped, they may grow up to 6x).
AGGREGATED_CHECKPOINTS_MAX_BYTES = 64 * 1024 * 1024

_RETURNED = (
    "task_name",
    "args",
    "kwargs",
    "generation",
    "executions",
    "parent_id",
    "holds_slots",
    "started_at",
    "metadata",
    "forked_from_id",
    "slot_key1",
    "slot_key2",
)


def _claim_returning(
    run_id: str, owner: str, now: datetime, lease_until: datetime, using: str
) -> tuple[Run, dict[str, StoredStep] | None] | None:
    """The claim as one ``UPDATE ... RETURNING`` (PostgreSQL, SQLite): no read of the run after it.

    The same compare-and-set as the ORM path in :func:`claim`, which MySQL uses. On PostgreSQL
    the same statement also reads the run's checkpoints (the ``UPDATE`` in a writable CTE, the
    steps aggregated as JSON, unless their outputs exceed ``AGGREGATED_CHECKPOINTS_MAX_BYTES``):
    a resumed run starts in one round trip. Returns the run and its checkpoints (``None``: not
    read), or ``None`` when the run is not ours to claim.
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
        f"AND {not_paused_sql(table, using)} "
        f"RETURNING {', '.join(q(c) for c in _RETURNED)}"
    )
    with_steps = connection.vendor == "postgresql"
    if with_steps:
        # The outputs' size first: past AGGREGATED_CHECKPOINTS_MAX_BYTES they are not aggregated
        # (one value of PostgreSQL is at most 1 GB), and the caller reads them row by row.
        step, run_id_column, output = q(Step._meta.db_table), q("run_id"), q("output")
        fields = ", ".join(f"s.{q(column)}" for column in _CHECKPOINT_COLUMNS)
        sql = (
            f"WITH c AS ({sql}) SELECT c.*, t.size, (SELECT json_agg(json_build_array({fields}))::text "
            f"FROM {step} AS s WHERE s.{run_id_column} = %s AND t.size <= %s) "
            f"FROM c, LATERAL (SELECT COALESCE(SUM(octet_length(z.{output})), 0) AS size "
            f"FROM {step} AS z WHERE z.{run_id_column} = %s) AS t"
        )
    params: list[Any] = [
        RunStatus.RUNNING,
        owner,
        value(lease_until),
        value(now),
        run_id,
        RunStatus.QUEUED,
        value(now),
        RunStatus.RUNNING,
        value(now),
        *([run_id, AGGREGATED_CHECKPOINTS_MAX_BYTES, run_id] if with_steps else []),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    checkpoints = None
    if with_steps:
        *row, size, steps = row
        if size <= AGGREGATED_CHECKPOINTS_MAX_BYTES:
            checkpoints = {item[0]: StoredStep(*item) for item in json.loads(steps or "[]")}
    values = dict(zip(_RETURNED, row, strict=True))
    started_at = values["started_at"]
    if isinstance(started_at, str):  # SQLite may return text
        started_at = parse_datetime(started_at)
    if isinstance(started_at, datetime) and started_at.tzinfo is None and now.tzinfo is not None:
        started_at = started_at.replace(tzinfo=now.tzinfo)  # SQLite stores UTC without an offset
    values.update(started_at=started_at, holds_slots=bool(values["holds_slots"]))
    return Run(id=run_id, status=RunStatus.RUNNING, **values), checkpoints


#: A checkpoint's columns, in :class:`StoredStep`'s order.
_CHECKPOINT_COLUMNS = ("step_id", "kind", "status", "output", "attempts")

_CHECKPOINTS = CompiledSelect(
    lambda run_id: Step.objects.filter(run_id=run_id).values_list(*_CHECKPOINT_COLUMNS),
    "\x00celery_durable.claims.run_id",
)


def load_checkpoints(run_id: str, using: str = "default") -> dict[str, StoredStep]:
    """All checkpoints of a run, in one query (compiled once: every resume reads them)."""
    return {row[0]: StoredStep(*row) for row in _CHECKPOINTS.rows(run_id, using=using)}


def extend_leases(owner: str, run_ids: list[str], lease_seconds: float, using: str = "default") -> set[str]:
    """Heartbeat: push the lease of runs this worker executes further out.

    Returns the ids among them whose cancellation was requested.
    """
    if not run_ids:
        return set()
    held = Run.objects.using(using).filter(id__in=run_ids, lease_owner=owner, status=RunStatus.RUNNING)
    held.update(lease_expires_at=clock.now() + timedelta(seconds=lease_seconds))
    return set(held.filter(cancel_requested_at__isnull=False).values_list("id", flat=True))
