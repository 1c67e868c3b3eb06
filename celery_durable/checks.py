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


@checks.register(checks.Tags.database, deploy=True)
def check_postgresql_prepared(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """W012 (``check --deploy``): PostgreSQL plans every statement again without prepared statements."""
    return postgresql_messages(settings.DATABASES, _psycopg3())


def _psycopg3() -> bool:
    """Whether Django talks to PostgreSQL through psycopg 3 (psycopg2 cannot prepare statements)."""
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:  # no PostgreSQL driver installed
        return False
    return bool(is_psycopg3)


def postgresql_messages(databases: dict[str, Any], psycopg3: bool = True) -> list[checks.CheckMessage]:
    """The prepared-statements check over a ``DATABASES`` dict (nothing to advise with psycopg2)."""
    messages: list[checks.CheckMessage] = []
    if not psycopg3:
        return messages
    for alias, config in databases.items():
        if "postgresql" not in config.get("ENGINE", ""):
            continue
        options = config.get("OPTIONS", {})
        if options.get("server_side_binding") is not True or options.get("prepare_threshold") is None:
            messages.append(
                checks.Warning(
                    f"database {alias!r} is PostgreSQL without prepared statements",
                    hint="PostgreSQL then plans each of a run's statements again, about half of its CPU per "
                    "run. Set OPTIONS={'server_side_binding': True, 'prepare_threshold': 5} unless a "
                    "connection pooler in front of it cannot keep prepared statements (PgBouncer < 1.21 "
                    "in transaction mode).",
                    id="celery_durable.W012",
                )
            )
    return messages


def _celery_app() -> Any:
    from celery._state import get_current_app

    return get_current_app()


@checks.register()
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E004/E010/W011: durable tasks need acks_late and install(app); W007-W009: broker priority."""
    return celery_messages(_celery_app())


def celery_messages(app: Any) -> list[checks.CheckMessage]:
    """The Celery checks over one Celery app, after importing its task modules as a worker does."""
    from .integration import guard
    from .integration.task import DurableTask

    messages: list[checks.CheckMessage] = []
    try:
        guard.import_task_modules(app)
    except Exception as exc:
        messages.append(
            checks.Warning(
                f"the Celery task modules could not be imported: {exc!r}",
                hint="The checks of durable tasks (E004, E010, W007-W009) only see tasks already "
                "imported. A worker would fail to import them too.",
                id="celery_durable.W011",
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
    installed = guard.installed(app)
    if durable and not installed:
        names = sorted(task.name for task in durable)
        messages.append(
            checks.Error(
                guard.missing_install_message(app, names),
                hint=guard.missing_install_hint(app),
                id="celery_durable.E010",
            )
        )
    prioritized = [task.name for task in durable if task.durable_priority is not None]
    if prioritized and installed:
        messages.extend(priority_messages(app, prioritized))
    return messages


def priority_messages(app: Any, prioritized: list[str]) -> list[checks.CheckMessage]:
    """W007-W009: the settings without which ``priority=`` cannot order the broker's queue."""
    from .integration.routing import broker_driver, router_installed

    names = ", ".join(sorted(prioritized)[:3]) + (", ..." if len(prioritized) > 3 else "")
    messages: list[checks.CheckMessage] = []
    if broker_driver(str(app.conf.broker_url)) == "amqp" and not app.conf.task_queue_max_priority:
        messages.append(
            checks.Warning(
                f"tasks with priority= ({names}) on RabbitMQ without task_queue_max_priority",
                hint="Set CELERY_TASK_QUEUE_MAX_PRIORITY = 10 so queues are declared with "
                "x-max-priority (RabbitMQ cannot add it to an existing queue: use a new queue "
                "name). Until then priority= orders the database backlogs only.",
                id="celery_durable.W007",
            )
        )
    if app.conf.worker_prefetch_multiplier != 1:
        messages.append(
            checks.Warning(
                f"tasks with priority= ({names}) and worker_prefetch_multiplier = "
                f"{app.conf.worker_prefetch_multiplier!r}",
                hint="A worker that prefetches several messages runs them in arrival order. Set "
                "CELERY_WORKER_PREFETCH_MULTIPLIER = 1.",
                id="celery_durable.W008",
            )
        )
    if not router_installed(app):
        messages.append(
            checks.Warning(
                f"tasks with priority= ({names}) but task_routes was replaced after install(app)",
                hint="celery_durable.install(app) puts its priority router in front of "
                "task_routes; set task_routes before calling it.",
                id="celery_durable.W009",
            )
        )
    return messages


DJANGO_TASKS_BACKEND = "celery_durable.tasks.DurableBackend"


@checks.register()
def check_django_tasks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """E020: ``TASKS`` names ``celery_durable.tasks.DurableBackend`` on Django < 6.0."""
    return django_tasks_messages(getattr(settings, "TASKS", None))


def django_tasks_messages(tasks: Any, version: tuple[int, ...] | None = None) -> list[checks.CheckMessage]:
    """The ``TASKS`` check for a Django version (this one by default)."""
    import django

    version = version or tuple(django.VERSION[:2])
    if version >= (6, 0) or not isinstance(tasks, dict):
        return []
    aliases = sorted(
        str(alias)
        for alias, config in tasks.items()
        if isinstance(config, dict) and config.get("BACKEND") == DJANGO_TASKS_BACKEND
    )
    if not aliases:
        return []
    return [
        checks.Error(
            f"TASKS[{aliases[0]!r}] uses {DJANGO_TASKS_BACKEND}, which needs Django >= 6.0 "
            f"(this is Django {'.'.join(map(str, version))})",
            hint="django.tasks exists from Django 6.0 on: upgrade Django, or declare the tasks "
            "with @durable_task and remove the TASKS setting.",
            id="celery_durable.E020",
        )
    ]
