"""The Django admin as the control plane of durable runs.

:class:`~celery_durable.admin.runs.RunAdmin` registers the runs changelist, the run page
(arguments, result or error, the step timeline, parent and child runs), the dashboard and
the cancel/replay actions; :class:`~celery_durable.admin.events.EventAdmin` the events
list, each event's effects and the "send event" form;
:class:`~celery_durable.admin.schedules.ScheduleStateAdmin` the schedules and their actions;
:class:`~celery_durable.admin.pauses.PauseAdmin` the active pauses of tasks, with "Resume";
:class:`~celery_durable.admin.limits.LimitAdmin` the concurrency keys and their overrides.
"""

from __future__ import annotations

from .events import EventAdmin
from .limits import LimitAdmin
from .pauses import PauseAdmin
from .runs import RunAdmin
from .schedules import ScheduleStateAdmin

__all__ = ["EventAdmin", "LimitAdmin", "PauseAdmin", "RunAdmin", "ScheduleStateAdmin"]
