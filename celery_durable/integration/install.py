"""``install(app)``: worker services, connection reuse for durable tasks, send_task intake."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps, signals
from django.db import DatabaseError, connections

from .publish import NUDGE_HEADER

logger = logging.getLogger("celery_durable")


class DurableServicesStep(bootsteps.StartStopStep):
    """Worker bootstep running the waker, sweeper and reaper in a thread of the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: Any = None

    def start(self, parent: Any) -> None:
        """Start the services thread unless ``RUN_SERVICES_IN_WORKER`` is off."""
        from ..conf import get_settings
        from .services import ServiceThread

        if get_settings().RUN_SERVICES_IN_WORKER:
            self.thread = ServiceThread(parent.app)
            self.thread.start()

    def stop(self, parent: Any) -> None:
        """Stop the services thread."""
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    terminate = stop


def _is_durable(task: Any) -> bool:
    from .task import DurableTask

    return isinstance(task, DurableTask)


def keep_connections_for_durable_tasks(app: Celery) -> None:
    """Replace the Django fixup's close-every-connection-around-every-task for durable tasks.

    Celery >= 5.6 closes Django's connections before and after every task, which costs a
    new database session per task (research: 718 -> 136 tasks/s on PostgreSQL). For
    durable tasks we keep the connection and close it only when it had errors and is no
    longer usable, or when a positive ``CONN_MAX_AGE`` has passed. Plain tasks keep
    Celery's behaviour.
    """
    worker_fixup = None
    for fixup in getattr(app, "_fixups", None) or []:
        if hasattr(fixup, "worker_fixup"):
            worker_fixup = fixup.worker_fixup
    if worker_fixup is None:
        return
    original_prerun = worker_fixup.on_task_prerun
    original_postrun = worker_fixup.on_task_postrun
    signals.task_prerun.disconnect(original_prerun)
    signals.task_postrun.disconnect(original_postrun)

    def on_task_prerun(sender: Any = None, **kwargs: Any) -> None:
        if _is_durable(sender):
            _close_unusable_connections()
        else:
            original_prerun(sender=sender, **kwargs)

    def on_task_postrun(sender: Any = None, **kwargs: Any) -> None:
        if not _is_durable(sender):
            original_postrun(sender=sender, **kwargs)

    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="celery_durable.prerun")
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="celery_durable.postrun")


def _close_unusable_connections() -> None:
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        try:
            max_age = conn.settings_dict.get("CONN_MAX_AGE") or 0
            expired = max_age and conn.close_at is not None and time.monotonic() >= conn.close_at
            check = conn.errors_occurred or conn.settings_dict.get("CONN_HEALTH_CHECKS")
            if expired or conn.in_atomic_block or (check and not conn.is_usable()):
                conn.close()
            else:
                conn.errors_occurred = False
        except DatabaseError:
            conn.close()


def _fail_unregistered_run(sender: Any = None, message: Any = None, name: str = "", id: str = "", **kw: Any) -> None:
    """A worker got a run of a task it does not have (removed by a deploy): fail the run."""
    headers = getattr(message, "headers", None) or {}
    if not headers.get(NUDGE_HEADER):
        return
    from .. import runs

    if runs.fail_unregistered(id, name):
        logger.error("durable run %s: task %r is not registered in this worker; the run failed", id, name)


def _record_send_task_run(
    sender: Any = None,
    body: Any = None,
    headers: Any = None,
    exchange: str = "",
    routing_key: str = "",
    **kwargs: Any,
) -> None:
    """``app.send_task()`` bypasses ``apply_async``: record the run before the message leaves."""
    if not isinstance(headers, dict) or headers.get(NUDGE_HEADER):
        return
    from celery import current_app

    task = current_app.tasks.get(headers.get("task") or sender)
    from .task import DurableTask

    if not isinstance(task, DurableTask):
        return
    args, kwargs_, _embed = body if isinstance(body, list | tuple) and len(body) == 3 else ((), {}, None)
    from datetime import datetime

    from .. import runs, serialization

    # Later publications (waker, sweeper, reaper) go where this message goes.
    destination = {"queue": routing_key} if not exchange and routing_key else {}
    if exchange:
        destination = {"exchange": exchange, "routing_key": routing_key}
    eta = headers.get("eta")
    runs.create(
        run_id=headers["id"],
        task_name=task.name,
        args=task._encode_args(tuple(args)),
        kwargs=task._encode_kwargs(dict(kwargs_)),
        options=serialization.dumps(destination, "publish options"),
        wake_at=datetime.fromisoformat(eta) if isinstance(eta, str) else None,
    )
    headers[NUDGE_HEADER] = True


def install(app: Celery) -> None:
    """Plug celery-durable into a Celery app: worker services, connection reuse, intake hooks.

    Plain tasks are untouched. Call it once, after ``config_from_object``.
    """
    if getattr(app, "_celery_durable_installed", False):
        return
    app._celery_durable_installed = True  # type: ignore[attr-defined]
    app.steps["worker"].add(DurableServicesStep)

    def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
        from ..conf import get_settings

        if get_settings().REUSE_CONNECTIONS:
            keep_connections_for_durable_tasks(app)

    def start_heartbeat(**kwargs: Any) -> None:
        from .services import ensure_heartbeat

        ensure_heartbeat()

    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=f"celery_durable.worker_init.{id(app)}")
    # Leases of long steps are renewed by a thread in each process that executes tasks:
    # the worker itself (solo, threads) and every prefork child.
    signals.worker_ready.connect(start_heartbeat, weak=False, dispatch_uid="celery_durable.heartbeat")
    signals.worker_process_init.connect(start_heartbeat, weak=False, dispatch_uid="celery_durable.heartbeat.child")
    signals.before_task_publish.connect(
        _record_send_task_run, weak=False, dispatch_uid="celery_durable.before_task_publish"
    )
    signals.task_unknown.connect(_fail_unregistered_run, weak=False, dispatch_uid="celery_durable.task_unknown")
