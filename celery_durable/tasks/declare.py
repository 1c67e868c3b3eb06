"""One durable Celery task per Django task, named by the Django task's module path.

A Django ``Task`` is registered the first time the backend validates it (when ``@task``
runs at import time). Its flow options come from ``@durable_options`` (below ``@task``)
and from the backend's ``OPTIONS["TASK_OPTIONS"][module_path]`` (which win, option by option).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync

from ..engine.declaration import validate_options
from ..engine.spec import TaskSpec
from ..exceptions import DurableConfigError
from ..integration.task import DurableTask, durable_task
from .known import registered, remember
from .results import running_context

if TYPE_CHECKING:
    from django.tasks import Task

# The ``@durable_task`` options a Django task may declare.
FLOW_OPTIONS = frozenset(
    {
        "concurrency",
        "priority",
        "throttle",
        "rate_limit",
        "debounce",
        "idempotency_key",
        "singleton",
        "timeouts",
        "schedule",
        "cancel_on",
        "on_failure",
        "retries",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "default_retry_delay",
        "autoretry_for",
        "dont_autoretry_for",
    }
)
OPTIONS_ATTRIBUTE = "__durable_options__"

# The priority (-600..600 s) of the call being enqueued, from the Django task's ``priority``.
_call_priority: ContextVar[int | None] = ContextVar("celery_durable_django_priority", default=None)
_lock = threading.Lock()


class DjangoDurableTask(DurableTask):
    """The Celery task of one Django task: its Django ``priority`` per call overrides ours."""

    @property
    def durable_spec(self) -> TaskSpec:
        """The task's spec, with the priority of the call being enqueued (if any)."""
        spec = super().durable_spec
        priority = _call_priority.get()
        return spec if priority is None else replace(spec, priority=priority)


def durable_options(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Flow options of ``@durable_task`` for a Django task; put it below ``@task``.

    ::

        @task
        @durable_options(concurrency=Concurrency(key="user_id", limit=1), retries=5)
        def send_report(user_id): ...

    Invalid options raise :class:`DurableConfigError` here, at import time.
    """
    unknown = sorted(set(options) - FLOW_OPTIONS)
    if unknown:
        raise DurableConfigError(
            f"durable_options: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(FLOW_OPTIONS))}"
        )

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isfunction(func):
            raise DurableConfigError(
                f"durable_options must decorate the function below @task, got {func!r} (put it under @task)"
            )
        name = f"{func.__module__}.{func.__qualname__}"
        validate_options(name, {**options, "run": caller_view(func, takes_context(func))})
        setattr(func, OPTIONS_ATTRIBUTE, dict(options))
        return func

    return decorate


def takes_context(func: Callable[..., Any]) -> bool:
    """Whether ``func``'s first parameter is Django's ``context`` (``@task(takes_context=True)``)."""
    parameters = list(inspect.signature(func).parameters)
    return bool(parameters) and parameters[0] == "context"


def caller_view(func: Callable[..., Any], with_context: bool) -> Callable[..., Any]:
    """A stand-in with the signature callers of ``enqueue`` see (without ``context``), for key checks."""

    def stand_in(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError

    signature = inspect.signature(func)
    if with_context:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    stand_in.__signature__ = signature  # type: ignore[attr-defined]
    return stand_in


def options_of(task: Task[..., Any], configured: dict[str, Any]) -> dict[str, Any]:
    """The task's flow options: ``@durable_options`` overridden by the backend's ``TASK_OPTIONS``."""
    declared = dict(getattr(task.func, OPTIONS_ATTRIBUTE, {}))
    return {**declared, **configured}


def register(task: Task[..., Any], configured: dict[str, Any]) -> None:
    """Register the durable Celery task of ``task`` (once per module path)."""
    path = task.module_path
    with _lock:
        if registered(path) is not None:
            return
        options = options_of(task, configured)
        unknown = sorted(set(options) - FLOW_OPTIONS)
        if unknown:
            raise DurableConfigError(f"{path}: unknown option(s) {', '.join(unknown)} in TASK_OPTIONS")
        durable_task(base=DjangoDurableTask, name=path, **options)(_runner(task))
        remember(task)


def celery_task(task: Task[..., Any]) -> Any:
    """The durable Celery task of ``task`` on the current Celery app."""
    from celery import current_app

    return current_app.tasks[task.module_path]


def _runner(task: Task[..., Any]) -> Callable[..., Any]:
    """The body of the Celery task: call the Django task's function (with its context)."""
    func = task.func
    path = task.module_path
    is_async = inspect.iscoroutinefunction(func)

    def run(*args: Any, **kwargs: Any) -> Any:
        call = async_to_sync(func) if is_async else func
        if task.takes_context:
            return call(running_context(path), *args, **kwargs)
        return call(*args, **kwargs)

    run.__signature__ = inspect.signature(caller_view(func, task.takes_context))  # type: ignore[attr-defined]
    run.__name__ = func.__name__
    run.__qualname__ = func.__qualname__
    run.__module__ = func.__module__
    run.__doc__ = func.__doc__
    return run


def mapped_priority(django_priority: int) -> int | None:
    """Our priority (-600..600 s of head start) for Django's -100..100: times 6; 0 keeps the declared one."""
    if django_priority == 0:
        return None
    return int(django_priority) * 6


class call_priority:
    """Within the block, the task being enqueued has this priority (``None``: its declared one)."""

    def __init__(self, priority: int | None) -> None:
        self.priority = priority

    def __enter__(self) -> None:
        self.token = _call_priority.set(self.priority)

    def __exit__(self, *exc: object) -> None:
        _call_priority.reset(self.token)


__all__ = [
    "DjangoDurableTask",
    "call_priority",
    "caller_view",
    "durable_options",
    "mapped_priority",
    "register",
    "takes_context",
]
