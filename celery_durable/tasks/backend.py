"""``DurableBackend``: Django's task backend API on durable runs (enqueue, results, checks)."""

from __future__ import annotations

from typing import Any, ParamSpec, TypeVar, cast

from django.core import checks
from django.tasks import DEFAULT_TASK_QUEUE_NAME, Task, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started

from .. import clock, signals
from ..engine.declaration import validate_options
from ..exceptions import DurableConfigError
from ..integration.routing import broker_driver, broker_level
from .declare import (
    FLOW_OPTIONS,
    call_priority,
    caller_view,
    celery_task,
    mapped_priority,
    options_of,
    register,
)
from .known import registered
from .results import task_of, to_result

_P = ParamSpec("_P")
_R = TypeVar("_R")
BACKEND_OPTIONS = frozenset({"TASK_OPTIONS"})


class DurableBackend(BaseTaskBackend):
    """Runs Django tasks as durable runs on the project's Celery app.

    ``OPTIONS["TASK_OPTIONS"]`` maps a task's module path to ``@durable_task`` flow options.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.task_options: Any = self.options.get("TASK_OPTIONS", {})

    def configured(self, path: str) -> dict[str, Any]:
        """The ``TASK_OPTIONS`` of the task at ``path`` (``DurableConfigError`` if malformed)."""
        if not isinstance(self.task_options, dict):
            raise DurableConfigError(f"TASKS[{self.alias!r}]['OPTIONS']['TASK_OPTIONS'] must be a dict")
        options = self.task_options.get(path, {})
        if not isinstance(options, dict):
            raise DurableConfigError(f"TASK_OPTIONS[{path!r}] must be a dict of @durable_task options")
        return options

    def validate_task(self, task: Task[..., Any]) -> None:
        """Django's checks of the task, then register its durable Celery task (once)."""
        super().validate_task(task)
        register(task, self.configured(task.module_path))

    def enqueue(self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]) -> TaskResult[_P, _R]:
        """Record a durable run of ``task``; its message is published when the transaction commits."""
        self.validate_task(task)
        options: dict[str, Any] = {}
        if task.queue_name != DEFAULT_TASK_QUEUE_NAME:
            options["queue"] = task.queue_name
        if task.run_after is not None and task.run_after > clock.now():
            options["eta"] = task.run_after
        priority = mapped_priority(task.priority)
        celery = celery_task(task)
        if priority is not None:  # stored with the run: republications keep the broker level
            conf = celery.app.conf
            level = broker_level(priority, broker_driver(str(conf.broker_url)), conf.task_queue_max_priority)
            if level is not None:
                options["priority"] = level
        with call_priority(priority):
            sent = celery.apply_async(args=tuple(args), kwargs=dict(kwargs), **options)
        result = cast("TaskResult[_P, _R]", self._result(str(sent.id), task))
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The run ``result_id`` as a ``TaskResult`` (``TaskResultDoesNotExist`` if none)."""
        return self._result(result_id, None)

    def _result(self, result_id: str, task: Task[..., Any] | None) -> TaskResult[..., Any]:
        from ..models import Run

        if not isinstance(result_id, str) or "\x00" in result_id:
            raise TaskResultDoesNotExist(result_id)
        run = Run.objects.filter(id=result_id).first()
        if run is None:
            raise TaskResultDoesNotExist(result_id)
        return to_result(run, self.alias, task)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """E021: malformed or invalid ``OPTIONS``; E022: ``TASK_OPTIONS`` names no Django task."""
        messages: list[checks.CheckMessage] = list(super().check(**kwargs))
        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        unknown = sorted(set(self.options) - BACKEND_OPTIONS)
        if unknown:
            messages.append(_error(f"{where} has unknown key(s) {', '.join(map(str, unknown))}", "E021"))
        if not isinstance(self.task_options, dict):
            return [*messages, _error(f"{where}['TASK_OPTIONS'] must be a dict of module path -> options", "E021")]
        for path, options in self.task_options.items():
            messages.extend(self._check_task(str(path), options))
        return messages

    def _check_task(self, path: str, options: Any) -> list[checks.CheckMessage]:
        if not isinstance(options, dict):
            return [_error(f"TASK_OPTIONS[{path!r}] must be a dict of @durable_task options", "E021")]
        unknown = sorted(set(options) - FLOW_OPTIONS)
        if unknown:
            return [_error(f"TASK_OPTIONS[{path!r}] has unknown option(s) {', '.join(unknown)}", "E021")]
        try:
            task = task_of(path)
        except Exception as exc:  # the module exists but does not import
            task, problem = None, f" (importing it raised {exc!r})"
        else:
            problem = ""
        if task is None:
            return [
                _error(
                    f"TASK_OPTIONS names {path!r}, which is not a Django task{problem}",
                    "E022",
                    hint="Use the module path of a function decorated with @task (task.module_path).",
                )
            ]
        try:
            validate_options(path, {**options_of(task, options), "run": caller_view(task.func, task.takes_context)})
        except DurableConfigError as exc:
            return [_error(str(exc), "E021")]
        return []


def _error(message: str, code: str, hint: str | None = None) -> checks.Error:
    return checks.Error(message, hint=hint, id=f"celery_durable.{code}")


def _bridge(signal: Any, django_signal: Any) -> None:
    """Send Django's task signal when a run of a Django task starts or ends."""

    def receiver(sender: str, run_id: str, **kwargs: Any) -> None:
        task = registered(sender)
        if task is None:
            return
        from django.tasks import task_backends

        backend = task_backends[task.backend]
        if isinstance(backend, DurableBackend):
            django_signal.send(type(backend), task_result=backend.get_result(run_id))

    signal.connect(receiver, weak=False, dispatch_uid=f"celery_durable.tasks.{id(signal)}")


for _ours, _django in (
    (signals.run_started, task_started),
    (signals.run_completed, task_finished),
    (signals.run_failed, task_finished),
    (signals.run_cancelled, task_finished),
):
    _bridge(_ours, _django)
