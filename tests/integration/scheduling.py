"""Helpers of the schedule tests: a fixed start, services ticks, and a task's runs."""

from datetime import UTC, datetime

from celery import current_app

from celery_durable.integration.services import tick
from celery_durable.models import Run

START = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)


def services(times=3):
    """``times`` services ticks one after the other (as three workers' services would)."""
    return [tick(current_app, backstops=False).scheduled for _ in range(times)]


def runs_of(task):
    return list(Run.objects.filter(task_name=task.name).order_by("created_at", "id"))
