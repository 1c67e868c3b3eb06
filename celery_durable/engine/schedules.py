"""Schedules without beat: the services' tick fires each due tick of a ``Schedule`` once.

Every worker's services try; the conditional UPDATE of :func:`store.schedules.claim` lets
exactly one win, and the runs of the ticks it claimed are recorded in the same transaction
under a deterministic id (``schedule:<task>:<tick>``), so a tick is never fired twice,
not even by a backfill of the same range. Messages go out after commit; a message lost in
a crash after the commit is republished by the sweeper like any other.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import transaction

from .. import clock
from ..exceptions import DurableError, ScheduleError
from ..flow.keys import stored_key
from ..models import ScheduleState
from ..options import Schedule
from ..store import cancellation, schedules
from ..store.messages import RunMessage
from . import cancel, intake
from .ports import Publisher, Timetable
from .spec import TaskSpec

logger = logging.getLogger("celery_durable")

#: Ticks one row fires in one pass at most (the rest go in the next passes).
MAX_TICKS_PER_PASS = 100
#: Missed ticks looked at after a downtime at most (beyond, the older ones are dropped).
MAX_SCAN = 100_000
#: Ticks one backfill fires at most.
MAX_BACKFILL = 1_000

CANCELLED_BY_TICK = "cancelled by the next tick of its schedule (overlap='cancel_other')"


def tick_run_id(task_name: str, tick: datetime) -> str:
    """The run id of ``task_name``'s tick at ``tick``: the same for every process, so fired once."""
    moment = tick.astimezone(UTC) if tick.tzinfo else tick
    return stored_key(f"schedule:{task_name}:{moment.isoformat()}")


@dataclass
class _Plan:
    """What one claim of a schedule row does."""

    start: list[datetime] = field(default_factory=list)
    skip: list[tuple[datetime, str]] = field(default_factory=list)
    cancel: str | None = None
    last_run_id: str | None = None
    last_tick_at: datetime | None = None
    buffered_tick_at: datetime | None = None


def missed_ticks(
    schedule: Schedule, first: datetime, now: datetime, next_after: Callable[[datetime], datetime]
) -> tuple[list[datetime], datetime]:
    """The ticks from ``first`` up to ``now`` to fire, and the next tick to wait for.

    Ticks older than ``now - catchup`` are dropped; with ``catchup=None`` only the latest
    due tick is fired. At most :data:`MAX_TICKS_PER_PASS` are returned: the next tick is
    then the one after the last returned (still due: the next pass goes on).
    """
    window = None if schedule.catchup is None else now - schedule.catchup
    tick = first
    if window is not None and tick < window:
        tick = max(tick, next_after(window - timedelta(microseconds=1)))
    elif window is None and schedule.every is not None:
        tick = max(tick, next_after(now - schedule.every))
    ticks: list[datetime] = []
    scanned = 0
    while tick <= now and scanned < MAX_SCAN:
        ticks.append(tick)
        tick = next_after(tick)
        scanned += 1
    if tick <= now:  # too many to look at: the rest are dropped
        logger.warning("durable schedule: more than %d missed ticks, the older ones dropped", MAX_SCAN)
        tick = next_after(now)
    if window is None:
        return ticks[-1:], tick
    if len(ticks) > MAX_TICKS_PER_PASS:
        ticks = ticks[:MAX_TICKS_PER_PASS]
        tick = next_after(ticks[-1])
    return ticks, tick


def plan(row: ScheduleState, spec: TaskSpec, ticks: list[datetime], unfinished: bool) -> _Plan:
    """Apply the overlap policy to the buffered tick and the due ``ticks``, in order."""
    assert spec.schedule is not None
    overlap = spec.schedule.overlap
    result = _Plan(last_run_id=row.last_run_id, last_tick_at=row.last_tick_at, buffered_tick_at=row.buffered_tick_at)
    if result.buffered_tick_at is not None and not unfinished:
        result.start.append(result.buffered_tick_at)
        result.last_run_id = tick_run_id(spec.name, result.buffered_tick_at)
        result.buffered_tick_at = None
        unfinished = True
    for index, tick in enumerate(ticks):
        result.last_tick_at = tick
        if overlap == "skip" and unfinished:
            result.skip.append((tick, f"schedule overlap='skip': run {result.last_run_id} is unfinished"))
            continue
        if overlap == "buffer_one" and unfinished:
            if result.buffered_tick_at is None:
                result.buffered_tick_at = tick
            else:
                result.skip.append((tick, "schedule overlap='buffer_one': a tick is buffered already"))
            continue
        if overlap == "cancel_other" and index < len(ticks) - 1:
            result.skip.append((tick, "schedule overlap='cancel_other': superseded by a later missed tick"))
            continue
        if overlap == "cancel_other" and unfinished and result.last_run_id:
            result.cancel = result.last_run_id
        result.start.append(tick)
        result.last_run_id = tick_run_id(spec.name, tick)
        unfinished = True
    return result


def fire_due(timetable: Timetable, publisher: Publisher, using: str = "default") -> int:
    """Fire the due ticks of every scheduled task (one query when none is due); the runs started."""
    specs = {spec.name: spec for spec in timetable.scheduled()}
    if not specs:
        return 0
    now = clock.now()
    found = {row.task_name: row for row in schedules.rows(sorted(specs), using)}
    started = 0
    for name, spec in specs.items():
        schedule = spec.schedule
        assert schedule is not None
        row = found.get(name)
        if row is None:  # first seen: the first tick is the next one
            schedules.create(name, schedule.definition, timetable.next_after(schedule, now), using)
            continue
        if row.definition != schedule.definition:
            schedules.redefine(row, schedule.definition, timetable.next_after(schedule, now), using)
            continue
        if row.paused:
            continue
        due = row.next_tick_at is not None and row.next_tick_at <= now
        if due or row.buffered_tick_at is not None:
            try:
                started += _fire(row, spec, timetable, publisher, now, using)
            except Exception:
                # Its transaction rolled back (the tick stays due): the other schedules, and
                # the rest of the services tick, go on; the next tick tries again.
                logger.exception("durable schedule of %s: its due tick could not be fired", name)
    return started


def _fire(
    row: ScheduleState, spec: TaskSpec, timetable: Timetable, publisher: Publisher, now: datetime, using: str
) -> int:
    schedule = spec.schedule
    assert schedule is not None
    ticks: list[datetime] = []
    next_tick = row.next_tick_at
    if next_tick is not None and next_tick <= now:
        ticks, next_tick = missed_ticks(schedule, next_tick, now, lambda t: timetable.next_after(schedule, t))
    unfinished = schedules.is_unfinished(row.last_run_id, using)
    if not ticks and (row.buffered_tick_at is None or unfinished):
        return 0
    decided = plan(row, spec, ticks, unfinished)
    replaced = None
    with transaction.atomic(using=using):
        claimed = schedules.claim(
            row,
            next_tick_at=next_tick,
            last_tick_at=decided.last_tick_at,
            last_run_id=decided.last_run_id,
            buffered_tick_at=decided.buffered_tick_at,
            using=using,
        )
        if not claimed:
            return 0
        if decided.cancel is not None:
            try:
                replaced = cancellation.cancel(decided.cancel, CANCELLED_BY_TICK, using)
            except DurableError:
                replaced = None  # it finished meanwhile
        for tick, reason in decided.skip:
            schedules.record_skipped(_message(spec, tick_run_id(spec.name, tick)), reason, using)
        for tick in decided.start:
            _start(spec, tick_run_id(spec.name, tick), publisher)
    if replaced is not None:
        cancel.finish(replaced, publisher)
    return len(decided.start)


def _message(spec: TaskSpec, run_id: str) -> RunMessage:
    assert spec.schedule is not None
    args_json, kwargs_json = intake.encode_arguments(spec.name, spec.schedule.args, spec.schedule.kwargs)
    return RunMessage(run_id, spec.name, args_json, kwargs_json, "{}")


def _start(spec: TaskSpec, run_id: str, publisher: Publisher) -> bool:
    """Record (through the task's flow control) and publish on commit; ``False`` if it exists already."""
    assert spec.schedule is not None
    if schedules.exists(run_id):
        return False
    message = _message(spec, run_id)
    intake.record(spec, message, spec.schedule.args, dict(spec.schedule.kwargs), None, publisher)
    return True


def _scheduled(timetable: Timetable, task_name: str) -> TaskSpec:
    spec = timetable.spec(task_name)
    if spec is None or spec.schedule is None:
        raise ScheduleError(f"{task_name}: no durable task with a Schedule is registered here")
    return spec


def trigger(timetable: Timetable, publisher: Publisher, task_name: str) -> str:
    """Start one run of the schedule now (whatever its overlap policy); its run id."""
    spec = _scheduled(timetable, task_name)
    now = clock.now()
    run_id = stored_key(f"schedule:{task_name}:manual:{uuid.uuid4().hex}")
    with transaction.atomic():
        _start(spec, run_id, publisher)
        schedules.set_last_run(task_name, run_id, now)
    return run_id


def backfill(timetable: Timetable, publisher: Publisher, task_name: str, start: datetime, end: datetime) -> list[str]:
    """Fire each tick in ``[start, end]`` that was never fired (same ids as the services' ticks).

    Idempotent: a tick already fired (by the services or an earlier backfill) is left alone.
    The overlap policy is not applied. Returns the run ids started.
    """
    spec = _scheduled(timetable, task_name)
    schedule = spec.schedule
    assert schedule is not None
    if start > end:
        raise ScheduleError(f"{task_name}: backfill start {start} is after its end {end}")
    ticks = []
    tick = timetable.next_after(schedule, start - timedelta(microseconds=1))
    while tick <= end:
        ticks.append(tick)
        if len(ticks) > MAX_BACKFILL:
            raise ScheduleError(f"{task_name}: a backfill fires at most {MAX_BACKFILL} ticks; give a shorter range")
        tick = timetable.next_after(schedule, tick)
    started = []
    with transaction.atomic():
        for tick in ticks:
            run_id = tick_run_id(task_name, tick)
            if _start(spec, run_id, publisher):
                started.append(run_id)
    return started


def pause(task_name: str) -> bool:
    """Stop firing the schedule's ticks; ``False`` if it was paused already (or has no row yet)."""
    return schedules.set_paused(task_name, True)


def resume(timetable: Timetable, task_name: str) -> bool:
    """Fire again from the next tick (the ticks missed while paused are not; backfill them if needed)."""
    spec = _scheduled(timetable, task_name)
    assert spec.schedule is not None
    return schedules.set_paused(task_name, False, timetable.next_after(spec.schedule, clock.now()))


__all__ = ["backfill", "fire_due", "missed_ticks", "pause", "plan", "resume", "tick_run_id", "trigger"]
