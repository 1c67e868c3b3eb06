"""The Django tasks this process has registered as durable Celery tasks, by module path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.tasks import Task

_known: dict[str, Task[..., Any]] = {}


def registered(path: str) -> Task[..., Any] | None:
    """The Django task registered under ``path``, if this process has seen it."""
    return _known.get(path)


def remember(task: Task[..., Any]) -> None:
    """Record that ``task``'s durable Celery task is registered."""
    _known[task.module_path] = task
