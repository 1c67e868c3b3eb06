"""Background services: the waker/sweeper/reaper loop and the lease heartbeat.

They run in threads of the worker (a bootstep) or standalone (``manage.py
durable_services``). Each tick opens and closes its own database connection: a thread of
the worker's main process must not hold a connection across a prefork fork.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from celery import Celery
from django.db import DatabaseError, connections

from .. import runs, signals
from ..conf import get_settings
from .publish import publish_all

logger = logging.getLogger("celery_durable")


@dataclass
class TickReport:
    """What one tick of the services did."""

    woken: int = 0
    republished: int = 0
    recovered: int = 0
    failed: int = 0
    timed_out: int = 0
    promoted: int = 0


# The slot backstops (leaked slots, stranded backlogs) repair rare races: every N ticks.
BACKSTOP_EVERY = 10


def tick(app: Celery, using: str = "default", backstops: bool = True) -> TickReport:
    """One pass: publish due runs, republish lost messages, requeue expired leases.

    An idle pass costs one query (:func:`runs.work_pending`); ``backstops`` adds the slot
    backstops (the services loop runs them every ``BACKSTOP_EVERY`` ticks).
    """
    settings = get_settings()
    report = TickReport()
    if runs.work_pending(settings.WAKER_INTERVAL, settings.REPUBLISH_AFTER_SECONDS, using):
        _services(app, report, settings.WAKER_BATCH_SIZE, using)
    if backstops:
        from .. import slots

        # Slots held by runs that are no longer queued or running, and backlogs whose slots
        # are free (each normally handled in the transition itself).
        batch = settings.WAKER_BATCH_SIZE
        report.promoted = publish_all(app, slots.repair(batch)) + publish_all(app, slots.promote_stranded(batch))
    return report


def _services(app: Celery, report: TickReport, batch: int, using: str) -> None:
    settings = get_settings()
    # Runs due within the next interval go out now with a short countdown: just in time.
    due = runs.take_due(batch, settings.WAKER_INTERVAL, using)
    report.woken = publish_all(app, due)
    from ..api import after_cancel
    from ..cancellation import take_timed_out

    timed_out = take_timed_out(batch, using)
    after_cancel(timed_out)
    publish_all(app, timed_out.nudges)
    report.timed_out = len(timed_out.cancelled) + len(timed_out.requested)
    lost = runs.take_unpublished(settings.REPUBLISH_AFTER_SECONDS, batch, using)
    report.republished = publish_all(app, lost)
    reaped = runs.take_expired(settings.MAX_RECOVERIES, batch, using)
    signals.recovered(reaped.nudges, reaped.requeued)
    report.recovered = publish_all(app, reaped.nudges)
    from ..cancellation import Cancellation
    from ..exceptions import WorkerLost

    after_cancel(Cancellation(cancelled=reaped.cancelled))
    for run_id in reaped.failed:
        app.backend.mark_as_failure(run_id, WorkerLost(run_id))
        _on_failure(app, run_id)
    report.failed = len(reaped.failed)


def _on_failure(app: Celery, run_id: str) -> None:
    """A run failed outside any execution (its worker kept dying): call its ``on_failure``."""
    from ..models import Run
    from .task import DurableTask

    task_name = Run.objects.filter(id=run_id).values_list("task_name", flat=True).first()
    task = app.tasks.get(task_name or "")
    if isinstance(task, DurableTask):
        task._call_on_failure(run_id)


class ServiceThread(threading.Thread):
    """Runs :func:`tick` every ``WAKER_INTERVAL`` seconds until stopped."""

    def __init__(self, app: Celery, using: str = "default") -> None:
        super().__init__(name="celery-durable-services", daemon=True)
        self.app = app
        self.using = using
        self.stopping = threading.Event()

    def run(self) -> None:
        """The loop; database errors are logged and retried on the next tick.

        A tick that filled a whole batch is followed at once by the next one (a backlog of
        due runs drains at database speed, not one batch per interval). Ticks start every
        ``WAKER_INTERVAL`` (the time a tick took is not added to it): a tick publishes the runs
        due before the next tick starts, so a busy tick does not leave a gap of runs that are
        published only after their wake time.
        """
        ticks = 0
        while not self.stopping.is_set():
            full = False
            started = time.monotonic()
            try:
                report = tick(self.app, self.using, backstops=ticks % BACKSTOP_EVERY == 0)
                ticks += 1
                full = max(report.woken, report.republished, report.recovered) >= get_settings().WAKER_BATCH_SIZE
                if report.woken or report.republished or report.recovered or report.failed or report.timed_out:
                    logger.info("durable services: %s", report)
            except DatabaseError as exc:
                logger.warning("durable services: database error, retrying next tick: %s", exc)
            except Exception:
                logger.exception("durable services: tick failed")
            finally:
                connections.close_all()
            if not full:
                self.stopping.wait(max(0.0, get_settings().WAKER_INTERVAL - (time.monotonic() - started)))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)


class Heartbeat(threading.Thread):
    """Extends the leases of the runs this process executes while their steps run."""

    def __init__(self, owner: str, active: set[str], using: str = "default") -> None:
        super().__init__(name="celery-durable-heartbeat", daemon=True)
        self.owner = owner
        self.active = active
        self.using = using
        self.stopping = threading.Event()

    def run(self) -> None:
        """Every ``HEARTBEAT_SECONDS``, push the leases of active runs out again."""
        settings = get_settings()
        while not self.stopping.wait(settings.HEARTBEAT_SECONDS):
            ids = list(self.active)
            if not ids:
                continue
            try:
                from ..execution import active

                active.cancelled.update(runs.extend_leases(self.owner, ids, get_settings().LEASE_SECONDS, self.using))
            except DatabaseError as exc:
                logger.warning("durable heartbeat: database error: %s", exc)
            except Exception:
                logger.exception("durable heartbeat: failed; retrying next beat")
            finally:
                connections.close_all()


_heartbeat: Heartbeat | None = None
_heartbeat_lock = threading.Lock()


def ensure_heartbeat() -> None:
    """Start this process's heartbeat thread if it is not running (e.g. after a fork)."""
    global _heartbeat
    from ..execution import active, lease_owner

    owner = lease_owner()
    with _heartbeat_lock:
        if _heartbeat is not None and _heartbeat.is_alive() and _heartbeat.owner == owner:
            return
        _heartbeat = Heartbeat(owner, active.ids)
        _heartbeat.start()
