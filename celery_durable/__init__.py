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
    "CancelOn",
    "ChildRunFailed",
    "Concurrency",
    "Debounce",
    "DurableConfigError",
    "DurableError",
    "DurableTask",
    "NonDeterminismError",
    "NonRetriableError",
    "NotInDurableRun",
    "RateLimit",
    "RetryAfter",
    "RunCancelled",
    "RunNotFound",
    "RunSkipped",
    "SerializationError",
    "Singleton",
    "Throttle",
    "Timeouts",
    "durable_task",
    "get_run",
    "install",
    "replay",
    "step",
]
