"""Giving an event to the runs that wait for it: their waits found and locked, then resolved.

``send_event`` resumes every matching wait in a constant number of statements. When every
run waiting for the name matches (the common case: one name, no ``match``), the two UPDATEs
select the rows by the same condition that found them and name no run ids; otherwise, or
if the rows they touch are not exactly the waits that were read, the UPDATEs name the ids.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from django.db import transaction
from django.db.models import Case, TextField, Value, When
from django.db.models.expressions import Combinable
from django.db.models.functions import Concat, Left, Length

from .. import clock, serialization
from ..models import Run, Step
from ..runtime.events import ANY_OF, wait_names
from ..states import RunStatus, StepStatus
from .messages import RunMessage
from .rows import message_columns, message_from, queued_again

#: How a waiting step's output ends (``{**state, "event": None}`` as JSON, the event last).
WAITING_OUTPUT_END = '"event": null}'


class Wait(NamedTuple):
    """A pending wait step, with its run's message; ``output`` is its state as stored."""

    pk: int
    run_id: str
    step_id: str
    output: str
    message: RunMessage

    @property
    def state(self) -> dict[str, Any]:
        """The wait's state, decoded."""
        state: dict[str, Any] = serialization.loads(self.output or "{}")
        return state

    def wants(self) -> tuple[list[str], dict[str, Any] | None]:
        """The event names the wait is for and its ``match``, decoded only as far as needed.

        Names are plain JSON strings: the standard decoder reads them several times faster
        than the one that revives dates and decimals (``timeout_at`` is one), which only a
        ``match`` may need.
        """
        plain = json.loads(self.output or "{}")
        return wait_names(plain), (self.state.get("match") if plain.get("match") else None)


def _waiting_for(name: str) -> Any:
    """The runs that may wait for ``name``: for it alone, or for any of several events."""
    return Run.objects.filter(status=RunStatus.WAITING, waiting_for__in=[name, ANY_OF])


def pending_waits(name: str) -> list[Wait]:
    """Every wait step of a run that may wait for ``name``, with the run's message, in one query.

    That is the runs waiting for ``name`` alone and those waiting for any of several
    events (``waiting_for = ANY_OF``; the caller checks the names in the wait state). The
    step and run rows are locked (in run id order, so two senders of one name cannot
    deadlock) until the caller's transaction ends: what the caller reads is still true when
    it resolves them.
    """
    pending = (
        Step.objects.select_for_update()
        .filter(
            run__status=RunStatus.WAITING, run__waiting_for__in=[name, ANY_OF], kind="wait", status=StepStatus.PENDING
        )
        .order_by("run_id")
        .values_list("id", "step_id", "output", *message_columns("run__"))
    )
    return [Wait(pk, row[0], step_id, output, message_from(row)) for pk, step_id, output, *row in pending]


def resolve_every_wait(name: str, waits: list[Wait], event: dict[str, Any]) -> list[RunMessage] | None:
    """Give ``event`` to every run waiting for ``name``: two UPDATEs that name no run ids.

    ``waits`` are all that :func:`pending_waits` returned for ``name`` (locked in the
    caller's transaction), each of which takes the event. The UPDATEs select their rows by
    the condition that found them; if either touches another number of rows than there are
    waits (a run began waiting since, a step's output has another layout, a run has two
    pending waits), nothing is changed and ``None`` is returned: use :func:`resolve_waits`.
    """
    now = clock.now()
    steps = Step.objects.filter(
        run__in=_waiting_for(name), kind="wait", status=StepStatus.PENDING, output__endswith=WAITING_OUTPUT_END
    )
    with transaction.atomic():
        steps_written = steps.update(status=StepStatus.COMPLETED, output=_with_event(event), finished_at=now)
        runs_written = _waiting_for(name).update(**queued_again(now)) if steps_written == len(waits) else 0
        if runs_written != len(waits):
            transaction.set_rollback(True)
            return None
    return [wait.message for wait in waits]


def resolve_waits(waits: list[Wait], event: dict[str, Any]) -> list[RunMessage]:
    """Give many waiting runs one event in a constant number of queries, naming their ids.

    ``waits`` are rows of :func:`pending_waits`, normally locked in the caller's
    transaction. Each run leaves ``waiting`` (compare-and-set) and its wait step completes
    with the event; returns the messages of the runs resumed.
    """
    if not waits:
        return []
    now = clock.now()
    with transaction.atomic():
        messages = {wait.run_id: wait.message for wait in waits}
        # The rows are locked: every run is still waiting, the guard makes sure of it.
        waiting = Run.objects.select_for_update().filter(id__in=list(messages), status=RunStatus.WAITING)
        resumed = list(waiting.values_list("id", flat=True))
        if not resumed:
            return []
        Run.objects.filter(id__in=resumed, status=RunStatus.WAITING).update(**queued_again(now))
        chosen = set(resumed)
        _complete_waits([wait for wait in waits if wait.run_id in chosen], event, now)
        return [messages[run_id] for run_id in resumed]


def _with_event(event: dict[str, Any]) -> Combinable:
    """A waiting output with the event spliced in: its trailing ``null}`` replaced in SQL."""
    event_text = serialization.dumps(event, f"event {event.get('name')!r}")
    return Concat(Left("output", Length("output") - len("null}")), Value(event_text + "}"), output_field=TextField())


def _complete_waits(waits: list[Wait], event: dict[str, Any], now: datetime) -> None:
    """Complete the wait steps with ``{**state, "event": event}`` as their output.

    In one UPDATE whatever their number: the waiting output's trailing ``null}`` is replaced
    by the event's JSON in SQL (building one CASE branch per step cost Django ~0.3 s per
    1,000 steps). A step whose output ends otherwise is written from its state in Python.
    """
    pending = Step.objects.filter(pk__in=[wait.pk for wait in waits], status=StepStatus.PENDING)
    written = pending.filter(output__endswith=WAITING_OUTPUT_END).update(
        status=StepStatus.COMPLETED, output=_with_event(event), finished_at=now
    )
    if written == len(waits):
        return
    left = set(pending.values_list("pk", flat=True))
    outputs = {
        wait.pk: serialization.dumps({**wait.state, "event": event}, f"wait {wait.step_id!r}")
        for wait in waits
        if wait.pk in left
    }
    if outputs:
        output = Case(*(When(pk=pk, then=Value(text)) for pk, text in outputs.items()), output_field=TextField())
        pending.filter(pk__in=list(outputs)).update(status=StepStatus.COMPLETED, output=output, finished_at=now)
