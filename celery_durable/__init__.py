"""celery-durable: durable steps and flow control for Celery tasks, in the Django database.

Importing this package has no side effects and needs no Django settings.
"""

from __future__ import annotations

from .api import batch_run, cancel, get_run, replay, send_event
from .exceptions import (
    ChildRunFailed,
    DirectCallError,
    DurableConfigError,
    DurableError,
    DurableNotMigrated,
    NonDeterminismError,
    NonRetriableError,
    NotInDurableRun,
    RetryAfter,
    RunCancelled,
    RunNotFound,
    RunSkipped,
    RunStateError,
    SerializationError,
    StepNotFound,
    StepTimeout,
)
from .integration.install import install
from .integration.task import DurableTask, durable_task
from .options import Batch, CancelOn, Concurrency, Debounce, RateLimit, RetryPolicy, Singleton, Throttle, Timeouts
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
    "SerializationError",
    "Singleton",
    "StepNotFound",
    "StepTimeout",
    "Throttle",
    "Timeouts",
    "batch_run",
    "cancel",
    "durable_task",
    "get_run",
    "install",
    "replay",
    "send_event",
    "step",
]
