"""``send_event``: record an event, start ``on_event`` tasks, resume waiting runs, apply ``cancel_on``."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from .. import clock, serialization, validation
from ..conf import get_settings
from ..exceptions import DurableConfigError
from ..runtime.events import MISSING, Event, lookup, matches, validate_event_name
from ..store import event_waits, events, runs
from ..store.cancellation import Cancellation, cancel_descendant
from ..store.messages import RunMessage
from . import cancel
from .ports import Publisher, TaskRegistry
from .spec import TaskSpec

logger = logging.getLogger("celery_durable")


def send_event(
    name: str, data: dict[str, Any] | None, event_id: str | None, registry: TaskRegistry, publisher: Publisher
) -> Event:
    """Record an event and act on it in one transaction.

    It starts ``on_event`` tasks, resumes matching waits and cancels runs whose
    ``cancel_on`` matches. The same ``event_id`` within ``IDEMPOTENCY_WINDOW`` does nothing
    twice (the first event is returned).
    """
    validate_event_name(name, "send_event")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise DurableConfigError(f"send_event({name!r}): data must be a dict, got {type(data).__name__}")
    if event_id is not None:
        validation.check_identifier(event_id, f"send_event({name!r}): id")
    settings = get_settings()
    data_json = serialization.dumps_value(
        data, f"data of event {name!r}", settings.MAX_ARGUMENT_BYTES, "MAX_ARGUMENT_BYTES"
    )
    with transaction.atomic():
        row, created = events.record(name, data_json, event_id, settings.IDEMPOTENCY_WINDOW)
        event = events.as_event(row)
        if not created:
            return event
        specs = registry.specs()
        messages = _start_triggered(event, specs)
        messages += _resume_waiting(event, row.pk)
        cancellation = _cancel_matching(event, specs)
    cancel.finish(Cancellation(cancelled=cancellation.cancelled, messages=messages + cancellation.messages), publisher)
    return event


def _start_triggered(event: Event, specs: list[TaskSpec]) -> list[RunMessage]:
    messages = []
    for spec in specs:
        if spec.on_event == event.name:
            kwargs = serialization.dumps({"event": event.to_json()}, f"event argument of {spec.name}")
            message = runs.record_call(spec.name, "[]", kwargs, "{}", deadlines=spec.deadlines(clock.now()))
            if message is not None:
                messages.append(message)
    return messages


def _resume_waiting(event: Event, row_pk: int) -> list[RunMessage]:
    """Resume every run waiting for the event: a constant number of queries, however many wait."""
    pending = event_waits.pending_waits(event.name)
    waits = []
    for wait in pending:
        names, match = wait.wants()
        if event.name in names and matches(event.data, match):
            waits.append(wait)
    payload = {**event.to_json(), "_row": row_pk}
    if waits and len(waits) == len(pending):  # every run waiting for the name takes it
        resumed = event_waits.resolve_every_wait(event.name, waits, payload)
        if resumed is not None:
            return resumed
    return event_waits.resolve_waits(waits, payload)


def _cancel_matching(event: Event, specs: list[TaskSpec]) -> Cancellation:
    outcome = Cancellation()
    for spec in specs:
        rules = [rule for rule in spec.cancel_on if rule.event == event.name]
        if not rules:
            continue
        for run_id, args, kwargs in events.unfinished_runs(spec.name):
            try:
                arguments = spec.bound_arguments(args, kwargs)
            except TypeError as exc:
                # Stored arguments that no longer fit the task's signature (a deploy changed
                # it): this run cannot be matched, and it must not stop the event for others.
                logger.warning(
                    "durable run %s: cancel_on of %r skipped, its arguments do not bind: %s", run_id, event.name, exc
                )
                continue
            if any(_rule_matches(rule.match, event.data, arguments) for rule in rules):
                cancel_descendant(run_id, f"cancelled by event {event.name!r}", outcome)
    return outcome


def _rule_matches(match: dict[str, str], data: dict[str, Any], arguments: dict[str, Any]) -> bool:
    """``CancelOn.match`` maps event data paths to task parameter paths; all must be present and equal."""
    for data_path, param_path in match.items():
        expected = lookup(arguments, param_path)
        if expected is MISSING or lookup(data, data_path) != expected:
            return False
    return True
