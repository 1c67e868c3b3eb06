"""Reading recorded histories for a replay check: runs and their steps in the order reached (no writes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import serialization
from ..exceptions import RunNotFound
from ..models import Run, Step
from ..runtime.records import StoredStep
from ..states import UNFINISHED

BATCH = 200


@dataclass(frozen=True)
class History:
    """One run's arguments and its checkpoints, in the order they were first reached."""

    run_id: str
    task_name: str
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    steps: list[StoredStep]


def _steps(run_ids: list[str], using: str) -> dict[str, list[StoredStep]]:
    rows = (
        Step.objects.using(using)
        .filter(run_id__in=run_ids)
        .order_by("run_id", "id")  # step rows are inserted when a step is first reached
        .values_list("run_id", "step_id", "kind", "status", "output", "attempts")
    )
    found: dict[str, list[StoredStep]] = {run_id: [] for run_id in run_ids}
    for run_id, step_id, kind, status, output, attempts in rows:
        found[run_id].append(StoredStep(step_id, kind, status, output, attempts))
    return found


def _histories(rows: list[tuple[str, str, str, str, str]], using: str) -> list[History]:
    steps = _steps([row[0] for row in rows], using)
    return [
        History(run_id, task, status, serialization.loads(args), serialization.loads(kwargs), steps[run_id])
        for run_id, task, status, args, kwargs in rows
    ]


_FIELDS = ("id", "task_name", "status", "args", "kwargs")


def of_run(run_id: str, using: str = "default") -> History:
    """The recorded history of one run, or raise :class:`RunNotFound`."""
    row = Run.objects.using(using).filter(id=run_id).values_list(*_FIELDS).first()
    if row is None:
        raise RunNotFound(run_id)
    return _histories([row], using)[0]


def unfinished(task_names: list[str] | None = None, using: str = "default") -> Iterator[History]:
    """Every unfinished durable run executed at least once (it has a history), in batches by id.

    Sleeping, waiting, queued again (a retry, a resumption), pending in a backlog after
    a first execution, and running runs.
    """
    runs = Run.objects.using(using).filter(durable=True, status__in=UNFINISHED, executions__gt=0)
    if task_names:
        runs = runs.filter(task_name__in=task_names)
    last = ""
    while True:
        batch = list(runs.filter(id__gt=last).order_by("id").values_list(*_FIELDS)[:BATCH])
        if not batch:
            return
        yield from _histories(batch, using)
        last = batch[-1][0]
