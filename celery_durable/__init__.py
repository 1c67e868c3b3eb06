"""celery-durable: durable steps and flow control for Celery tasks, in the Django database.

Importing this package has no side effects and needs no Django settings.
"""

from __future__ import annotations

from .api import batch_run, cancel, explain, fork, get_run, pause, replay, resume, send_event, set_limit
from .exceptions import (
    ChildRunFailed,
    DirectCallError,
    DurableConfigError,
    DurableError,
    DurableNotMigrated,
    InvalidMetadata,
    NonDeterminismError,
    NonRetriableError,
    NotInDurableRun,
    RetryAfter,
    RunCancelled,
    RunNotFound,
    RunSkipped,
    RunStateError,
    ScheduleError,
    SerializationError,
    StepNotFound,
    StepTimeout,
)
from .integration.install import install
from .integration.task import DurableTask, durable_task
from .options import (
    Batch,
    CancelOn,
    Concurrency,
    Debounce,
    RateLimit,
    RetryPolicy,
    Schedule,
    Singleton,
    Throttle,
    Timeouts,
)
from .runtime.context import step
from .runtime.events import Event

__all__ = [
    "Batch",
    "CancelOn",
    "ChildRunFailed",
    "Concurrency",
    "Debounce",
    "DirectCallError",
    "DurableConfigError",
    "DurableError",
    "DurableNotMigrated",
    "DurableTask",
    "Event",
    "InvalidMetadata",
    "NonDeterminismError",
    "NonRetriableError",
    "NotInDurableRun",
    "RateLimit",
    "RetryAfter",
    "RetryPolicy",
    "RunCancelled",
    "RunNotFound",
    "RunSkipped",
    "RunStateError",
    "Schedule",
    "ScheduleError",
    "SerializationError",
    "Singleton",
    "StepNotFound",
    "StepTimeout",
    "Throttle",
    "Timeouts",
    "batch_run",
    "cancel",
    "durable_task",
    "explain",
    "fork",
    "get_run",
    "install",
    "pause",
    "replay",
    "resume",
    "send_event",
    "set_limit",
    "step",
]
