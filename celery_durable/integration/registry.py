"""The engine's ports on a Celery app: its task registry and its publisher."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, current_app, signature

from ..engine.ports import ChildMessage
from ..engine.spec import TaskSpec
from ..exceptions import RunCancelled
from ..store.messages import RunMessage
from . import batch_results
from .publish import publish_all, publish_children, publish_on_commit

logger = logging.getLogger("celery_durable")


class CeleryRegistry:
    """The durable tasks registered on a Celery app."""

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or current_app

    def _task(self, name: str) -> Any:
        return self.app.tasks.get(name)

    def spec(self, name: str) -> TaskSpec | None:
        """The durable task ``name``, or ``None``."""
        spec = getattr(self._task(name), "durable_spec", None)
        return spec if isinstance(spec, TaskSpec) else None

    def is_durable(self, name: str) -> bool | None:
        """Whether task ``name`` is durable; ``None`` if it is not registered here."""
        task = self._task(name)
        return None if task is None else isinstance(getattr(task, "durable_spec", None), TaskSpec)

    def specs(self) -> list[TaskSpec]:
        """Every durable task of the app (the project's task modules imported first, once)."""
        _import_task_modules(self.app)
        found = [getattr(task, "durable_spec", None) for task in list(self.app.tasks.values())]
        return [spec for spec in found if isinstance(spec, TaskSpec)]


_imported: set[int] = set()


def _import_task_modules(app: Celery) -> None:
    """Make every task known here (a web process has not autodiscovered them yet)."""
    if id(app) not in _imported:
        app.loader.import_default_modules()
        _imported.add(id(app))


class CeleryPublisher:
    """Publishes run messages on a Celery app and tells its result backend about ended runs."""

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or current_app

    def publish(self, messages: list[RunMessage]) -> None:
        """Publish now."""
        publish_all(self.app, messages)

    def publish_on_commit(self, messages: list[RunMessage], using: str = "default") -> None:
        """Publish once the current transaction commits."""
        publish_on_commit(self.app, messages, using)

    def publish_children(self, parent_id: str, children: list[ChildMessage]) -> None:
        """Publish a parent's new child runs."""
        publish_children(self.app, parent_id, children)

    def cancelled(self, run_id: str, reason: str, durable: bool) -> None:
        """``.get()`` of a cancelled run raises ``RunCancelled``; a plain child is revoked, as Celery allows."""
        if durable:
            self.app.backend.mark_as_failure(run_id, RunCancelled(reason))
            batch_results.store_error(self.app, run_id, RunCancelled(reason))
        else:
            self.app.control.revoke(run_id)

    def failed_for_good(self, run_id: str, task_name: str, error: Exception) -> None:
        """Store the error of a run the reaper gave up on and call its ``on_failure``."""
        self.app.backend.mark_as_failure(run_id, error)
        spec = CeleryRegistry(self.app).spec(task_name)
        if spec is not None and spec.batch is not None:
            batch_results.store_error(self.app, run_id, error)
        if spec is not None:
            call_on_failure(self.app, spec, run_id)


def call_on_failure(app: Celery, spec: TaskSpec, run_id: str) -> None:
    """Send the task's ``on_failure`` signature with the run id (errors are logged, not raised)."""
    if spec.on_failure is None:
        return
    try:
        signature(spec.on_failure, app=app).apply_async((run_id,))
    except Exception:
        logger.exception("durable run %s: on_failure signature could not be sent", run_id)


def ports(app: Celery | None = None) -> tuple[CeleryRegistry, CeleryPublisher]:
    """The registry and publisher of ``app`` (the current app by default)."""
    return CeleryRegistry(app), CeleryPublisher(app)
