"""celery-durable: durable steps and flow control for Celery tasks, in the Django database.

Importing this package has no side effects and needs no Django settings.
"""

from __future__ import annotations

from .api import get_run, replay
from .exceptions import (
    ChildRunFailed,
    DurableConfigError,
    DurableError,
    NonDeterminismError,
    NonRetriableError,
    NotInDurableRun,
    RetryAfter,
    RunCancelled,
    RunNotFound,
    RunSkipped,
    SerializationError,
)
from .integration.install import install
from .integration.task import DurableTask, durable_task
from .options import CancelOn, Concurrency, Debounce, RateLimit, Singleton, Throttle, Timeouts
from .runtime.context import step

__all__ = [
    "install",
    "durable_task",
    "DurableTask",
    "step",
    "Concurrency",
    "Throttle",
    "RateLimit",
    "Debounce",
    "Singleton",
    "CancelOn",
    "Timeouts",
    "get_run",
    "replay",
    "DurableError",
    "DurableConfigError",
    "SerializationError",
    "NotInDurableRun",
    "NonRetriableError",
    "RetryAfter",
    "NonDeterminismError",
    "RunNotFound",
    "RunSkipped",
    "RunCancelled",
    "ChildRunFailed",
]
