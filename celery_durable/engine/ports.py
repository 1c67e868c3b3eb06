"""What the engine is handed instead of importing Celery: a task registry and a publisher.

``integration.registry`` implements both on a Celery app; ``celery_durable.testing``
swaps the publisher for one that records messages instead of sending them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from ..options import Schedule
from ..store.messages import RunMessage
from .spec import TaskSpec

# A child run to publish: (child id, its signature as a dict, whether its task is durable).
ChildMessage = tuple[str, dict[str, Any], bool]


class TaskRegistry(Protocol):
    """The tasks this process knows."""

    def spec(self, name: str) -> TaskSpec | None:
        """The durable task ``name``, or ``None`` (not registered, or a plain task)."""

    def is_durable(self, name: str) -> bool | None:
        """Whether task ``name`` is durable; ``None`` if it is not registered here."""

    def specs(self) -> list[TaskSpec]:
        """Every durable task registered here (task modules imported first)."""


class Publisher(Protocol):
    """Sends run messages to the broker and tells the result backend about ended runs."""

    def publish(self, messages: list[RunMessage]) -> None:
        """Publish now (the caller's transaction has committed, or there is none)."""

    def publish_on_commit(self, messages: list[RunMessage], using: str = "default") -> None:
        """Publish once the current transaction commits."""

    def publish_children(self, parent_id: str, children: list[ChildMessage]) -> None:
        """Publish the child runs a parent just recorded."""

    def cancelled(self, run_id: str, reason: str, durable: bool) -> None:
        """A run was cancelled: its result becomes ``RunCancelled`` (a plain child is revoked)."""

    def failed_for_good(self, run_id: str, task_name: str, error: Exception) -> None:
        """A run failed outside any execution (the reaper gave up): store the error, call ``on_failure``."""


class Timetable(Protocol):
    """The scheduled tasks this process knows and when their schedules tick (cron needs Celery)."""

    def scheduled(self) -> list[TaskSpec]:
        """Every durable task here that declares a ``Schedule``."""

    def spec(self, name: str) -> TaskSpec | None:
        """The durable task ``name``, or ``None``."""

    def next_after(self, schedule: Schedule, after: datetime) -> datetime:
        """The first tick of ``schedule`` strictly after ``after``."""
