"""One pass of the services.

Wake due runs, cancel timed-out ones, republish lost messages, reap expired leases, form
due batches, and repair slots (the backstops).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .. import clock, signals
from ..conf import get_settings
from ..exceptions import WorkerLost
from ..models import Run
from ..store import cancellation, recovery, slots
from ..store.cancellation import Cancellation
from . import batching, cancel, schedules
from .ports import Publisher, Timetable

# The waker publishes a run at most this many seconds before its wake time (with that
# countdown), and sleeps until just before the next wake time it knows of. Short: a run's
# message then spends (almost) no time as an ETA held in worker memory, which slows a
# RabbitMQ worker with prefetch 1 (a basic.qos round trip per held message).
PUBLISH_LEAD = 0.1


@dataclass
class TickReport:
    """What one tick of the services did."""

    woken: int = 0
    republished: int = 0
    recovered: int = 0
    failed: int = 0
    timed_out: int = 0
    promoted: int = 0
    scheduled: int = 0
    batches: int = 0
    # The earliest wake time within WAKER_INTERVAL that this tick left for later.
    next_wake: datetime | None = None


def tick(
    publisher: Publisher, using: str = "default", backstops: bool = True, timetable: Timetable | None = None
) -> TickReport:
    """One pass: fire due schedules, publish due runs, republish lost messages, requeue expired leases.

    An idle pass costs one query (:func:`recovery.work_pending`); ``backstops`` adds the
    slot backstops (the services loop runs them every ``BACKSTOP_EVERY`` ticks).
    """
    settings = get_settings()
    report = TickReport()
    batch = settings.WAKER_BATCH_SIZE
    if timetable is not None:
        report.scheduled = schedules.fire_due(timetable, publisher, using)
    lead = publish_lead(settings.WAKER_INTERVAL)
    pending = recovery.work_pending(settings.WAKER_INTERVAL, settings.REPUBLISH_AFTER_SECONDS, using)
    report.next_wake = pending.next_wake
    if pending.wakes(lead, clock.now()):
        # Runs due within the lead go out now with at most that countdown: just in time.
        due = recovery.take_due(batch, lead, using)
        publisher.publish(due)
        report.woken = len(due)
        if due:
            report.next_wake = None  # those were the earliest: the next tick looks again (next_tick_in)
    if pending.other:
        # Only when the probe saw some: while runs keep coming due, the loop ticks every
        # PUBLISH_LEAD, and these four queries each time would cost more than the wake-ups.
        timed_out = cancellation.take_timed_out(batch, using)
        cancel.finish(timed_out, publisher)
        report.timed_out = len(timed_out.cancelled) + len(timed_out.requested)
        lost = recovery.take_unpublished(settings.REPUBLISH_AFTER_SECONDS, batch, using)
        publisher.publish(lost)
        report.republished = len(lost)
        reaped = recovery.take_expired(settings.MAX_RECOVERIES, batch, using)
        signals.recovered(reaped.messages, reaped.requeued)
        publisher.publish(reaped.messages)
        report.recovered = len(reaped.messages)
        cancel.finish(Cancellation(cancelled=reaped.cancelled), publisher)
        names = dict(Run.objects.using(using).filter(id__in=reaped.failed).values_list("id", "task_name"))
        for run_id in reaped.failed:
            publisher.failed_for_good(run_id, names.get(run_id, ""), WorkerLost(run_id))
        report.failed = len(reaped.failed)
        report.batches = batching.form_due(publisher, using)
    if backstops:
        # Slots held by runs that are no longer queued or running, and backlogs whose slots
        # are free (each normally handled in the transition itself).
        promoted = slots.repair(batch) + slots.promote_stranded(batch)
        publisher.publish(promoted)
        report.promoted = len(promoted)
    return report


def publish_lead(waker_interval: float) -> float:
    """How long before its wake time the waker publishes a run (never more than the interval)."""
    return min(PUBLISH_LEAD, waker_interval)


def next_tick_in(report: TickReport | None, elapsed: float, waker_interval: float) -> float:
    """Seconds until the services loop's next tick.

    Just before the next wake time the tick saw, when it comes within the interval;
    ``PUBLISH_LEAD`` after the start of a tick that woke runs (more may be due right after
    them); otherwise ``WAKER_INTERVAL`` after it (also after a tick that failed: no report).
    """
    wait = waker_interval - elapsed
    if report is None:
        return max(0.0, wait)
    lead = publish_lead(waker_interval)
    if report.woken:
        wait = min(wait, lead - elapsed)
    if report.next_wake is not None:
        wait = min(wait, (report.next_wake - clock.now()).total_seconds() - lead)
    return max(0.0, wait)
