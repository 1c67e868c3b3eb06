"""``install(app)``: worker services, connection reuse for durable tasks, send_task intake."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from celery import Celery, bootsteps, current_app, signals
from django.db import DatabaseError, connections

from .. import serialization
from ..conf import error_text_limit, get_settings
from ..exceptions import RunNotFound, RunStateError
from ..runtime.errors import error_record
from . import handoff, observe
from .publish import CHILD_HEADER, NUDGE_HEADER, publish_all
from .routing import install_router
from .task import DurableTask
from .worker_log import log_transitions

logger = logging.getLogger("celery_durable")


class DurableServicesStep(bootsteps.StartStopStep):
    """Worker bootstep running the waker, sweeper and reaper in a thread of the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: Any = None

    def start(self, parent: Any) -> None:
        """Start the services thread unless ``RUN_SERVICES_IN_WORKER`` is off."""
        from .services import ServiceThread  # needs Django's app registry: not at import time

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
    return isinstance(task, DurableTask)


def keep_connections_for_durable_tasks(app: Celery) -> None:
    """Replace the Django fixup's close-every-connection-around-every-task for durable tasks.

    Celery >= 5.6 closes Django's connections before and after every task, which costs a
    new database session per task (research: 718 -> 136 tasks/s on PostgreSQL). For
    durable tasks (and plain tasks recorded by ``OBSERVE_PLAIN_TASKS``, which write to the
    database around every execution) we keep the connection and close it only when it had
    errors and is no longer usable, or when a positive ``CONN_MAX_AGE`` has passed. Other
    plain tasks keep Celery's behaviour.
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
        if _is_durable(sender) or observe.observed(sender):
            _close_unusable_connections()
        else:
            original_prerun(sender=sender, **kwargs)

    def on_task_postrun(sender: Any = None, **kwargs: Any) -> None:
        if not (_is_durable(sender) or observe.observed(sender)):
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
    from ..store import runs

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
    task = current_app.tasks.get(headers.get("task") or sender)
    if not isinstance(task, DurableTask):
        return
    args, kwargs_, _embed = body if isinstance(body, list | tuple) and len(body) == 3 else ((), {}, None)
    # Later publications (waker, sweeper, reaper) go where this message goes.
    destination = {"queue": routing_key} if not exchange and routing_key else {}
    if exchange:
        destination = {"exchange": exchange, "routing_key": routing_key}
    eta = headers.get("eta")
    from ..engine.intake import encode_arguments
    from ..store import runs

    args_json, kwargs_json = encode_arguments(task.name, tuple(args), dict(kwargs_))
    runs.create(
        run_id=headers["id"],
        task_name=task.name,
        args=args_json,
        kwargs=kwargs_json,
        options=serialization.dumps(destination, "publish options"),
        wake_at=datetime.fromisoformat(eta) if isinstance(eta, str) else None,
    )
    headers[NUDGE_HEADER] = True


def _plain_child_started(sender: Any = None, task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    if task is None or _is_durable(task) or not (task.request.headers or {}).get(CHILD_HEADER):
        return
    from ..store import suspension

    suspension.mark_plain_child_started(task_id)


def _plain_child_finished(
    sender: Any = None, task_id: str = "", task: Any = None, retval: Any = None, state: str = "", **kwargs: Any
) -> None:
    """A plain Celery task that runs as a child of a durable run finished: tell its parent."""
    if task is None or _is_durable(task) or state not in ("SUCCESS", "FAILURE"):
        return
    if not (task.request.headers or {}).get(CHILD_HEADER):
        return
    result = error = None
    completed = state == "SUCCESS"
    if completed:
        try:
            result = serialization.dumps(retval, f"result of {task.name}")
        except Exception as exc:
            completed, error = False, serialization.dumps(error_record(exc, error_text_limit()), "error record")
    else:
        error = serialization.dumps(
            error_record(retval, error_text_limit())
            if isinstance(retval, BaseException)
            else {"type": "Error", "module": "", "message": str(retval), "traceback": ""},
            "error record",
        )
    from ..store import suspension

    message = suspension.finish_plain_child(task_id, completed, result, error)
    if message is not None:
        publish_all(task.app, [message])


def _cancel_on_revoke(app: Celery) -> None:
    """``AsyncResult(run_id).revoke()`` (and ``app.control.revoke``) cancel durable runs too."""
    control = app.control
    original = control.revoke

    def revoke(task_id: Any, *args: Any, **kwargs: Any) -> Any:
        from . import actions  # needs Django's app registry: not at import time

        for run_id in task_id if isinstance(task_id, list | tuple) else [task_id]:
            with contextlib.suppress(RunNotFound, RunStateError):
                actions.cancel(str(run_id), "revoked")
        return original(task_id, *args, **kwargs)

    control.revoke = revoke  # type: ignore[method-assign]


def _load_execution_modules(sender: Any = None, **kwargs: Any) -> None:
    """Import the modules a durable execution needs, in the worker before it forks a pool process.

    They need Django's app registry, so :mod:`.task` imports them on its first execution: in
    every prefork child, on its first durable task (and again in each replacement child),
    unless the parent imported them first. Imported here they are shared with the children.
    """
    from django.apps import apps

    if not apps.ready:  # not a Django worker yet: the children import them as before
        return
    from ..engine import execution  # noqa: F401
    from . import services  # noqa: F401  (the heartbeat every child starts)


def install(app: Celery) -> None:
    """Plug celery-durable into a Celery app: worker services, connection reuse, intake hooks.

    It also puts a router in front of ``task_routes`` that gives each run's message the broker
    priority of its ``priority=`` (see ``integration/routing.py``).
    Plain tasks are untouched. Call it once, after ``config_from_object``.
    """
    if getattr(app, "_celery_durable_installed", False):
        return
    app._celery_durable_installed = True  # type: ignore[attr-defined]
    app.steps["worker"].add(DurableServicesStep)
    install_router(app)

    def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
        if get_settings().REUSE_CONNECTIONS:
            keep_connections_for_durable_tasks(app)

    def start_heartbeat(**kwargs: Any) -> None:
        from .services import ensure_heartbeat

        ensure_heartbeat()

    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=f"celery_durable.worker_init.{id(app)}")
    signals.worker_before_create_process.connect(
        _load_execution_modules, weak=False, dispatch_uid="celery_durable.load_execution_modules"
    )
    # The inline hand-off stays off under a worker's --time-limit / --soft-time-limit.
    signals.worker_init.connect(
        handoff.note_worker_time_limits, weak=False, dispatch_uid="celery_durable.worker_time_limits"
    )
    # Leases of long steps are renewed by a thread in each process that executes tasks:
    # the worker itself (solo, threads) and every prefork child.
    signals.worker_ready.connect(start_heartbeat, weak=False, dispatch_uid="celery_durable.heartbeat")
    signals.worker_process_init.connect(start_heartbeat, weak=False, dispatch_uid="celery_durable.heartbeat.child")
    signals.before_task_publish.connect(
        _record_send_task_run, weak=False, dispatch_uid="celery_durable.before_task_publish"
    )
    signals.task_unknown.connect(_fail_unregistered_run, weak=False, dispatch_uid="celery_durable.task_unknown")
    signals.task_prerun.connect(_plain_child_started, weak=False, dispatch_uid="celery_durable.child_prerun")
    signals.task_postrun.connect(_plain_child_finished, weak=False, dispatch_uid="celery_durable.child_postrun")
    _cancel_on_revoke(app)
    observe.connect()
    log_transitions()  # "sleeping until ...", "handed off inline", ... in the worker's log
