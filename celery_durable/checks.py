"""System checks (``celery_durable.E###`` errors, ``celery_durable.W###`` warnings)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from .exceptions import DurableConfigError


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E001: the ``CELERY_DURABLE`` settings dict is valid."""
    from .conf import get_settings

    try:
        get_settings()
    except DurableConfigError as exc:
        return [checks.Error(str(exc), id="celery_durable.E001")]
    return []


@checks.register()
def check_sqlite(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E002/W003: SQLite needs IMMEDIATE transactions (and WAL) for concurrent workers."""
    return sqlite_messages(settings.DATABASES)


def sqlite_messages(databases: dict[str, Any]) -> list[checks.CheckMessage]:
    """The SQLite check over a ``DATABASES`` dict."""
    messages: list[checks.CheckMessage] = []
    for alias, config in databases.items():
        if "sqlite3" not in config.get("ENGINE", ""):
            continue
        options = config.get("OPTIONS", {})
        if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
            messages.append(
                checks.Error(
                    f"database {alias!r} is SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE'",
                    hint="Concurrent workers then fail with 'database is locked'. Set "
                    "OPTIONS={'transaction_mode': 'IMMEDIATE', 'timeout': 20, "
                    "'init_command': 'PRAGMA journal_mode=WAL'}.",
                    id="celery_durable.E002",
                )
            )
        if "journal_mode=wal" not in str(options.get("init_command", "")).replace(" ", "").lower():
            messages.append(
                checks.Warning(
                    f"database {alias!r} is SQLite without WAL journal mode",
                    hint="Add 'init_command': 'PRAGMA journal_mode=WAL' to OPTIONS so readers do not block the writer.",
                    id="celery_durable.W003",
                )
            )
    return messages


def _celery_app() -> Any:
    from celery import current_app

    return current_app


@checks.register()
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E004/W005/W006: durable tasks need acks_late; priority defaults break routing."""
    from .integration.task import DurableTask

    app = _celery_app()
    messages: list[checks.CheckMessage] = []
    if app.conf.task_default_priority is not None:
        messages.append(
            checks.Warning(
                f"task_default_priority is {app.conf.task_default_priority!r}",
                hint="A non-None default priority overrides the priority celery-durable gives "
                "each run's message. Set CELERY_TASK_DEFAULT_PRIORITY = None.",
                id="celery_durable.W005",
            )
        )
    durable = [task for task in app.tasks.values() if isinstance(task, DurableTask)]
    for task in durable:
        if not task.acks_late:
            messages.append(
                checks.Error(
                    f"durable task {task.name!r} has acks_late=False",
                    hint="Without acks_late a worker that dies loses the message and the run waits "
                    "for its lease to expire. Remove acks_late=False.",
                    id="celery_durable.E004",
                )
            )
    if durable and not getattr(app, "_celery_durable_installed", False):
        messages.append(
            checks.Warning(
                "durable tasks are declared but celery_durable.install(app) was not called",
                hint="Call celery_durable.install(app) in your Celery module so workers run the "
                "waker and reaper and keep their database connection.",
                id="celery_durable.W006",
            )
        )
    return messages
