"""``send_event``: record an event, start ``on_event`` tasks, resume waiting runs, apply ``cancel_on``."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction

from . import clock, serialization, validation
from .conf import get_settings
from .exceptions import DurableConfigError
from .models import FINISHED_STATUSES, Run, RunStatus, Step, StepStatus
from .models import Event as EventRow
from .runtime.events import MISSING, Event, lookup, matches, validate_event_name


def _as_event(row: EventRow) -> Event:
    return Event(name=row.name, data=row.data_value, id=str(row.event_id), received_at=row.received_at)


def send_event(name: str, data: dict[str, Any] | None = None, *, id: str | None = None) -> Event:
    """Record an event and act on it in one transaction.

    It starts ``on_event`` tasks, resumes matching waits and cancels runs whose
    ``cancel_on`` matches. The same ``id`` within ``IDEMPOTENCY_WINDOW`` does nothing twice
    (the first event is returned).
    """
    from celery import current_app

    from .integration.publish import publish_on_commit

    validate_event_name(name, "send_event")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise DurableConfigError(f"send_event({name!r}): data must be a dict, got {type(data).__name__}")
    if id is not None:
        validation.check_identifier(id, f"send_event({name!r}): id")
    settings = get_settings()
    data_json = serialization.dumps_value(
        data, f"data of event {name!r}", settings.MAX_ARGUMENT_BYTES, "MAX_ARGUMENT_BYTES"
    )
    with transaction.atomic():
        row, created = _record(name, data_json, id, settings.IDEMPOTENCY_WINDOW)
        event = _as_event(row)
        if not created:
            return event
        _import_task_modules()
        nudges = _start_triggered(event)
        nudges += _resume_waiting(event, row.pk)
        cancellation = _cancel_matching(event)
        nudges += cancellation.nudges
        publish_on_commit(current_app, nudges)
    if cancellation.cancelled:
        from .api import after_cancel

        after_cancel(cancellation)
    return event


def _record(name: str, data_json: str, event_id: str | None, window: timedelta) -> tuple[EventRow, bool]:
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
    run_id: str, name: str, match: dict[str, Any] | None, exclude: set[str], using: str = "default"
) -> dict[str, Any] | None:
    """The oldest event ``name`` received since the run was created that matches and is unused."""
    created_at = Run.objects.using(using).values_list("created_at", flat=True).get(id=run_id)
    rows = EventRow.objects.using(using).filter(name=name, received_at__gte=created_at).order_by("received_at", "id")
    for row in rows.iterator(chunk_size=200):
        if f"row:{row.pk}" in exclude:
            continue
        event = _as_event(row)
        if matches(event.data, match):
            return {**event.to_json(), "_row": row.pk}
    return None


def _start_triggered(event: Event) -> list[Any]:
    from celery import current_app

    from .integration.task import DurableTask

    nudges = []
    for task in list(current_app.tasks.values()):
        if isinstance(task, DurableTask) and task.on_event == event.name:
            nudges.extend(task.start_for_event(event))
    return nudges


_imported = False


def _import_task_modules() -> None:
    """Make every task known here (a web process has not autodiscovered them yet)."""
    global _imported
    if not _imported:
        from celery import current_app

        current_app.loader.import_default_modules()
        _imported = True


def _resume_waiting(event: Event, row_pk: int) -> list[Any]:
    from .suspend import resolve_wait

    nudges = []
    # The pending waits of every run waiting for this name, in one query (a join on the run).
    pending = Step.objects.filter(
        run__status=RunStatus.WAITING, run__waiting_for=event.name, kind="wait", status=StepStatus.PENDING
    ).values_list("run_id", "step_id", "output")
    for run_id, step_id, output in list(pending):
        state = serialization.loads(output or "{}")
        if state.get("name") != event.name or not matches(event.data, state.get("match")):
            continue
        nudge = resolve_wait(run_id, step_id, {**event.to_json(), "_row": row_pk})
        if nudge is not None:
            nudges.append(nudge)
    return nudges


def _cancel_matching(event: Event) -> Any:
    from celery import current_app

    from .cancellation import Cancellation, _cancel
    from .integration.task import DurableTask

    outcome = Cancellation()
    for task in list(current_app.tasks.values()):
        if not isinstance(task, DurableTask):
            continue
        for rule in task.cancel_on or ():
            if rule.event != event.name:
                continue
            candidates = Run.objects.filter(task_name=task.name).exclude(status__in=FINISHED_STATUSES)
            for run in candidates.only("id", "args", "kwargs"):
                arguments = task.bound_arguments(run.args_value, run.kwargs_value)
                if _rule_matches(rule.match, event.data, arguments):
                    _cancel(run.id, f"cancelled by event {event.name!r}", outcome, "default", top=False)
    return outcome


def _rule_matches(match: dict[str, str], data: dict[str, Any], arguments: dict[str, Any]) -> bool:
    """``CancelOn.match`` maps event data paths to task parameter paths; all must be present and equal."""
    for data_path, param_path in match.items():
        expected = lookup(arguments, param_path)
        if expected is MISSING or lookup(data, data_path) != expected:
            return False
    return True
