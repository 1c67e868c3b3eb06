"""Operations over many runs, for the admin and the management commands.

Everything here goes through the same actions as the public API
(:mod:`celery_durable.integration.actions`) one run at a time, so the admin, the shell
commands and user code change runs the same way. This module adds what an operator needs on top:
replay from the first step, bulk operations that skip runs in the wrong state and say so,
retention pruning in bounded batches, and plain-data descriptions of runs for ``--json``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .exceptions import DurableError, RunNotFound, RunStateError
from .integration import actions
from .states import CANCELLABLE as _CANCELLABLE
from .states import FINISHED as _FINISHED
from .states import REPLAYABLE as _REPLAYABLE
from .store import prune as pruning

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import Run

#: Statuses a run can be replayed from.
REPLAYABLE = tuple(sorted(_REPLAYABLE))
#: Statuses a run can be cancelled from: every unfinished one.
CANCELLABLE = tuple(sorted(_CANCELLABLE))
#: Terminal statuses: only these are ever pruned.
FINISHED = tuple(sorted(_FINISHED))

BATCH_SIZE = 500


@dataclass
class BulkResult:
    """What a bulk operation did: the runs it changed, skipped (by status) and failed on."""

    operation: str
    done: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        """How many runs were skipped because of their status."""
        return sum(self.skipped.values())

    def describe_skipped(self) -> str:
        """``"2 running, 1 completed"``: the skipped runs by status, largest first."""
        return ", ".join(f"{n} {status}" for status, n in self.skipped.most_common())


@dataclass
class Preview:
    """What a bulk operation would touch: eligible runs and the others by status."""

    operation: str
    eligible: int
    skipped: Counter[str]

    @property
    def skipped_total(self) -> int:
        """How many selected runs the operation would skip."""
        return sum(self.skipped.values())

    def describe_skipped(self) -> str:
        """``"2 running, 1 completed"``."""
        return ", ".join(f"{n} {status}" for status, n in self.skipped.most_common())


def _eligible(operation: str) -> tuple[str, ...]:
    if operation == "cancel":
        return CANCELLABLE
    if operation in ("replay", "replay_from_start"):
        return REPLAYABLE
    raise ValueError(f"unknown operation {operation!r}")


def preview(operation: str, runs: QuerySet[Run]) -> Preview:
    """Count, in one query, the runs of ``runs`` that ``operation`` would change or skip."""
    from django.db.models import Count

    eligible_statuses = _eligible(operation)
    counts = Counter(
        {row["status"]: row["n"] for row in runs.order_by().values("status").annotate(n=Count("*")).order_by()}
    )
    eligible = sum(n for status, n in counts.items() if status in eligible_statuses)
    skipped = Counter({status: n for status, n in counts.items() if status not in eligible_statuses})
    return Preview(operation, eligible, skipped)


def first_step_id(run_id: str) -> str | None:
    """The id of the first step the run recorded, or ``None`` if it has none."""
    from .models import Step

    return Step.objects.filter(run_id=run_id).order_by("id").values_list("step_id", flat=True).first()


def replay(run_id: str, *, from_step: str | None = None, from_start: bool = False) -> Run:
    """Replay one run: from its failed step (default), from ``from_step``, or from the start.

    Replaying from the start is ``replay(run_id, from_step=<its first step>)``: every
    checkpoint is discarded and the task body runs again from the top.
    """
    if from_start:
        if from_step is not None:
            raise ValueError("pass from_step or from_start, not both")
        from_step = first_step_id(run_id)
    return actions.replay(run_id, from_step=from_step)


def cancel(run_id: str, reason: str = "") -> Run:
    """Cancel one run (as :func:`celery_durable.cancel` does); return the run as it is now."""
    return actions.cancel(run_id, reason=reason)


def _keyset(runs: QuerySet[Run], statuses: Iterable[str], batch: int) -> Iterator[list[str]]:
    """The ids of ``runs`` in ``statuses``, in primary-key batches (bounded memory)."""
    last: str | None = None
    chosen = runs.filter(status__in=list(statuses)).order_by("pk")
    while True:
        page = chosen if last is None else chosen.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:batch])
        if not ids:
            return
        yield ids
        last = ids[-1]


def bulk(operation: str, runs: QuerySet[Run], *, reason: str = "", batch: int = BATCH_SIZE) -> BulkResult:
    """Apply ``operation`` ("cancel", "replay", "replay_from_start") to every eligible run.

    Runs in a status the operation does not apply to are skipped and counted by status; a
    run whose status changed in between (say, a worker finished it) is reported in
    ``errors``. Each run is changed in its own transaction, through the public API.
    """
    eligible = _eligible(operation)
    result = BulkResult(operation)
    counts = preview(operation, runs)
    result.skipped = counts.skipped
    for ids in _keyset(runs, eligible, batch):
        for run_id in ids:
            try:
                if operation == "cancel":
                    cancel(run_id, reason)
                else:
                    replay(run_id, from_start=operation == "replay_from_start")
            except (RunStateError, RunNotFound) as exc:
                result.errors[run_id] = str(exc)
            except DurableError as exc:
                result.errors[run_id] = f"{type(exc).__name__}: {exc}"
            else:
                result.done.append(run_id)
    return result


# --- retention ------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


def parse_age(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` (a bare number means days)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m, 45s or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def prune(
    older_than: timedelta,
    *,
    batch: int = BATCH_SIZE,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Any = None,
) -> int:
    """Delete finished runs older than ``older_than`` with their steps; return how many.

    Deletes in batches of ``batch`` runs by primary key, each batch in its own short
    transaction (its steps, the links of its children, then the runs), so no statement
    touches more than one batch and locks are held briefly. Unfinished runs are never
    deleted. With ``dry_run`` nothing is deleted and the count is what would be.
    """
    old = pruning.prunable(older_than, now)
    if dry_run:
        return old.count()
    deleted = 0
    while True:
        ids = pruning.next_batch(old, batch)
        if not ids:
            return deleted
        gone = pruning.delete_batch(ids, older_than, now)
        deleted += gone
        if progress is not None:
            progress(deleted)
        if gone == 0:
            return deleted  # every run of the batch changed state meanwhile: stop, don't spin


# --- plain-data descriptions (``--json``) ---------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def duration(run: Run, now: datetime | None = None) -> float | None:
    """Seconds from start to finish (or to now for a run still going); ``None`` if not started."""
    from . import clock

    if run.started_at is None:
        return None
    end = run.finished_at or now or clock.now()
    return max(0.0, (end - run.started_at).total_seconds())


def describe_run(run: Run, *, full: bool = False) -> dict[str, Any]:
    """The run as JSON-ready data; ``full`` adds arguments, result and error (readable values)."""
    from .readable import readable

    data: dict[str, Any] = {
        "id": run.id,
        "task": run.task_name,
        "status": run.status,
        "priority": run.priority,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration": duration(run),
        "executions": run.executions,
        "wake_at": _iso(run.wake_at),
        "waiting_for": run.waiting_for,
        "parent": run.parent_id,
        "concurrency_keys": [key for key in (run.slot_key1, run.slot_key2) if key],
    }
    if full:
        data.update(
            args=readable(run.args_value),
            kwargs=readable(run.kwargs_value),
            result=readable(run.result_value),
            error=readable(run.error_value),
            recoveries=run.recoveries,
            lease_owner=run.lease_owner,
            lease_expires_at=_iso(run.lease_expires_at),
            cancel_requested_at=_iso(run.cancel_requested_at),
            cancel_reason=run.cancel_reason,
            metadata=run.metadata_value,
            progress=run.progress_value,
            forked_from=run.forked_from_id,
            forked_at_step=run.forked_at_step,
        )
    return data


def describe_steps(run_id: str) -> list[dict[str, Any]]:
    """The run's steps in the order they were reached, as JSON-ready data."""
    from . import serialization
    from .models import Step
    from .readable import readable

    steps = []
    for item in Step.objects.filter(run_id=run_id).order_by("id"):
        steps.append(
            {
                "step_id": item.step_id,
                "kind": item.kind,
                "status": item.status,
                "attempts": item.attempts,
                "started_at": _iso(item.started_at),
                "finished_at": _iso(item.finished_at),
                "duration": max(0.0, (item.finished_at - item.started_at).total_seconds()),
                "output": readable(item.output_value),
                "error": None if item.error is None else readable(serialization.loads(item.error)),
            }
        )
    return steps
