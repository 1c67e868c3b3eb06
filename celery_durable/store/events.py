"""Event rows: recording an event once per id, and finding the events and waits that match."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction

from .. import clock, serialization
from ..models import Event as EventRow
from ..models import Run, Step
from ..runtime.events import Event, matches
from ..states import FINISHED, StepStatus


def as_event(row: EventRow) -> Event:
    """The public :class:`Event` of a stored row."""
    return Event(name=row.name, data=row.data_value, id=str(row.event_id), received_at=row.received_at)


def record(name: str, data_json: str, event_id: str | None, window: timedelta) -> tuple[EventRow, bool]:
    """Store an event; ``(row, False)`` with the first event if ``event_id`` was used within ``window``."""
    now = clock.now()
    key = event_id or uuid.uuid4().hex
    for _ in range(2):
        try:
            with transaction.atomic():
                row = EventRow.objects.create(name=name, data=data_json, event_id=key, dedup_key=key, received_at=now)
                return row, True
        except IntegrityError:
            # The id is taken. Past the window it may be reused: the old event keeps its id
            # and row, and gives up the key (once; a concurrent sender may take it first).
            released = EventRow.objects.filter(dedup_key=key, received_at__lt=now - window).update(dedup_key=None)
            if not released:
                return EventRow.objects.get(dedup_key=key), False
    return EventRow.objects.get(dedup_key=key), False


def find_event(
    run_id: str, names: list[str], match: dict[str, Any] | None, exclude: set[str], using: str = "default"
) -> dict[str, Any] | None:
    """The oldest event with one of ``names`` received since the run was created that matches and is unused."""
    created_at = Run.objects.using(using).values_list("created_at", flat=True).get(id=run_id)
    named = {"name": names[0]} if len(names) == 1 else {"name__in": names}
    rows = EventRow.objects.using(using).filter(**named, received_at__gte=created_at).order_by("received_at", "id")
    for row in rows.iterator(chunk_size=200):
        if f"row:{row.pk}" in exclude:
            continue
        event = as_event(row)
        if matches(event.data, match):
            return {**event.to_json(), "_row": row.pk}
    return None


def wait_state(run_id: str, step_id: str, using: str = "default") -> dict[str, Any] | None:
    """The stored state of a run's wait step (its name and match), if the step exists."""
    step = Step.objects.using(using).filter(run_id=run_id, step_id=step_id).values("output").first()
    return None if step is None else serialization.loads(step["output"] or "{}")


def consumed_events(run_id: str, using: str = "default") -> list[dict[str, Any]]:
    """The events the run's completed waits consumed."""
    outputs = Step.objects.using(using).filter(run_id=run_id, kind="wait", status=StepStatus.COMPLETED)
    found = []
    for out in outputs.values_list("output", flat=True):
        event = serialization.loads(out or "{}").get("event")
        if event:
            found.append(event)
    return found


def unfinished_runs(task_name: str) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """``(id, args, kwargs)`` of a task's unfinished runs (``cancel_on`` matching)."""
    candidates = Run.objects.filter(task_name=task_name).exclude(status__in=FINISHED)
    return [(run.id, run.args_value, run.kwargs_value) for run in candidates.only("id", "args", "kwargs")]
