"""Background services: the waker/sweeper/reaper loop and the lease heartbeat.

They run in threads of the worker (a bootstep) or standalone (``manage.py
durable_services``). Each tick opens and closes its own database connection: a thread of
the worker's main process must not hold a connection across a prefork fork.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from django.db import DatabaseError, connections

from ..conf import get_settings
from ..engine import services
from ..engine.active import active, lease_owner
from ..engine.services import TickReport
from ..store import runs
from .registry import CeleryPublisher
from .timetable import CeleryTimetable

logger = logging.getLogger("celery_durable")


# The slot backstops (leaked slots, stranded backlogs) repair rare races: every N ticks.
BACKSTOP_EVERY = 10


def tick(app: Celery, using: str = "default", backstops: bool = True) -> TickReport:
    """One pass of the services on ``app`` (see :func:`celery_durable.engine.services.tick`)."""
    return services.tick(CeleryPublisher(app), using, backstops, CeleryTimetable(app))


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
                if (
                    report.scheduled
                    or report.woken
                    or report.republished
                    or report.recovered
                    or report.failed
                    or report.timed_out
                ):
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
    owner = lease_owner()
    with _heartbeat_lock:
        if _heartbeat is not None and _heartbeat.is_alive() and _heartbeat.owner == owner:
            return
        _heartbeat = Heartbeat(owner, active.ids)
        _heartbeat.start()
