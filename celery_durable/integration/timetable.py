"""When a ``Schedule`` ticks: cron strings parsed and stepped by Celery's ``crontab``.

The engine never imports Celery: it is handed a :class:`CeleryTimetable` (its
:class:`~celery_durable.engine.ports.Timetable` port) that lists the scheduled tasks and
gives the tick after a moment. ``every`` ticks are plain arithmetic (``Schedule.next_every``).
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app
from celery.schedules import crontab
from django.utils import timezone

from .. import serialization
from ..engine.spec import TaskSpec
from ..exceptions import ScheduleError, SerializationError
from ..options import Schedule
from .registry import CeleryRegistry


def parse_cron(expression: str, app: Celery | None = None) -> crontab:
    """The ``crontab`` of a 5-field cron string; :class:`ScheduleError` if Celery refuses it."""
    try:
        minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
        return crontab(minute, hour, day_of_week, day_of_month, month_of_year, app=app)
    except Exception as exc:  # ValueError, celery.schedules.ParseException
        raise ScheduleError(f"Schedule.cron {expression!r} is not a valid cron expression: {exc}") from None


def check_schedule(task_name: str, schedule: Any, fn: Any) -> None:
    """At import time: the cron string parses, and args/kwargs are JSON that fit the task's signature."""
    if not isinstance(schedule, Schedule):
        raise ScheduleError(f"{task_name}: option 'schedule' must be Schedule(cron=... or every=...)")
    if schedule.cron is not None:
        try:
            parse_cron(schedule.cron)
        except ScheduleError as exc:
            raise ScheduleError(f"{task_name}: {exc}") from None
    try:
        serialization.dumps([list(schedule.args), schedule.kwargs], f"{task_name}: Schedule args/kwargs")
    except SerializationError as exc:
        raise ScheduleError(str(exc)) from None
    function = getattr(fn, "__func__", None)
    bound = function is None and fn is not None  # a plain function in the class dict: bind=True
    target = function or fn
    if target is None:
        return
    try:
        parameters = list(inspect.signature(target).parameters.values())
        signature = inspect.Signature(parameters[1:] if bound else parameters)
        signature.bind(*schedule.args, **schedule.kwargs)
    except TypeError as exc:
        raise ScheduleError(f"{task_name}: Schedule args/kwargs do not fit the task's signature: {exc}") from None
    except ValueError:  # no signature to check (a builtin)
        return


def next_after(schedule: Schedule, after: datetime, app: Celery | None = None) -> datetime:
    """The first tick of ``schedule`` strictly after ``after`` (cron in the Celery app's timezone)."""
    if schedule.every is not None:
        return schedule.next_every(after)
    assert schedule.cron is not None
    naive = after.tzinfo is None  # USE_TZ=False: the clock gives naive local times
    moment = timezone.make_aware(after) if naive else after
    if moment.second or moment.microsecond:  # crontab steps from whole minutes
        moment = moment.replace(second=0, microsecond=0)
    cron = parse_cron(schedule.cron, app or current_app)
    last, delta, _ = cron.remaining_delta(moment)
    tick: datetime = (last + delta).astimezone(UTC)
    return timezone.make_naive(tick) if naive else tick


class CeleryTimetable:
    """The scheduled durable tasks of a Celery app and their ticks (the engine's ``Timetable``)."""

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or current_app
        self.registry = CeleryRegistry(self.app)

    def scheduled(self) -> list[TaskSpec]:
        """Every durable task of the app that declares a ``Schedule``."""
        return [spec for spec in self.registry.specs() if spec.schedule is not None]

    def spec(self, name: str) -> TaskSpec | None:
        """The durable task ``name`` (the project's task modules imported first), or ``None``."""
        return next((spec for spec in self.registry.specs() if spec.name == name), None)

    def next_after(self, schedule: Schedule, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        return next_after(schedule, after, self.app)
