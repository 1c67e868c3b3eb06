"""Registers both versions' tasks with the worker (``app.autodiscover_tasks()`` imports ``tasks``)."""

from . import after, before

__all__ = ["after", "before"]
