"""Background services: the waker/sweeper/reaper loop and the lease heartbeat.

They run in threads of the worker (a bootstep) or standalone (``manage.py
durable_services``). Each thread keeps its database connection from tick to tick (no
reconnect per tick); it is closed after a database error (the next tick reconnects) and,
by the thread's owner, before this process forks: a prefork child must not inherit it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from django.db import DatabaseError, connections

from .. import signals
from ..conf import get_settings
from ..engine import services
from ..engine.active import active, lease_owner
from ..engine.services import TickReport, next_tick_in
from ..store import claims
from .registry import CeleryPublisher
from .timetable import CeleryTimetable

logger = logging.getLogger("celery_durable")


# The slot backstops (leaked slots, stranded backlogs) repair rare races: every N ticks.
BACKSTOP_EVERY = 10


class KeptConnection:
    """A thread's database connection, kept from one tick to the next.

    :meth:`use` wraps a tick: the connection stays open after it unless the tick raised a
    database error or the connection is unusable (then it is closed, and the next tick
    connects again). Before this process forks, the forking thread waits for the tick in
    progress and closes the connection on the keeper's behalf, so no child inherits a live
    database session (its cleanup could end the parent's session).
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self.lock = threading.Lock()
        self.wrapper: Any = None
        _keepers.add(self)

    @contextmanager
    def use(self) -> Iterator[None]:
        """Run a tick on the kept connection; close it if the tick left it broken."""
        with self.lock:
            self.wrapper = connections[self.using]
            try:
                yield
            except DatabaseError:
                self.wrapper.close()
                raise
            finally:
                if self.wrapper.connection is not None and self.wrapper.errors_occurred:
                    if not self.wrapper.is_usable():
                        self.wrapper.close()
                    self.wrapper.errors_occurred = False

    def close_before_fork(self) -> None:
        """Hold the keeper and close its connection (from the forking thread)."""
        self.lock.acquire()
        wrapper = self.wrapper
        if wrapper is None or wrapper.connection is None:
            return
        wrapper.inc_thread_sharing()
        try:
            wrapper.close()
        except DatabaseError:
            logger.warning("durable services: closing the connection before a fork failed", exc_info=True)
        finally:
            wrapper.dec_thread_sharing()

    def release_after_fork(self) -> None:
        """Let the keeper's thread tick again."""
        if self.lock.locked():
            self.lock.release()


_keepers: weakref.WeakSet[KeptConnection] = weakref.WeakSet()
_held: list[KeptConnection] = []


def _before_fork() -> None:
    for keeper in list(_keepers):
        keeper.close_before_fork()
        _held.append(keeper)


def _after_fork() -> None:
    while _held:
        _held.pop().release_after_fork()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


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
        self.connection = KeptConnection(using)
        self.ticks = 0

    def run(self) -> None:
        """The loop; database errors are logged and retried on the next tick.

        A tick that filled a whole batch is followed at once by the next one (a backlog of
        due runs drains at database speed, not one batch per interval). Ticks start every
        ``WAKER_INTERVAL`` (the time a tick took is not added to it), or sooner: just before
        the next wake time a tick saw within the interval, and ``PUBLISH_LEAD`` after a tick
        that woke runs (see :func:`celery_durable.engine.services.next_tick_in`).
        """
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                full, report = self.beat()
                if not full:
                    self.stopping.wait(next_tick_in(report, time.monotonic() - started, get_settings().WAKER_INTERVAL))
        finally:
            connections.close_all()

    def beat(self) -> tuple[bool, TickReport | None]:
        """One tick on the kept connection: whether it filled a whole batch, and its report."""
        full = False
        report = None
        try:
            with self.connection.use():
                report = tick(self.app, self.using, backstops=self.ticks % BACKSTOP_EVERY == 0)
            full = max(report.woken, report.republished, report.recovered) >= get_settings().WAKER_BATCH_SIZE
            counts = (report.scheduled, report.batches, report.woken, report.republished, report.recovered)
            if any(counts) or report.failed or report.timed_out:
                logger.info("durable services: %s", report)
        except DatabaseError as exc:
            logger.warning("durable services: database error, retrying next tick: %s", exc)
        except Exception:
            logger.exception("durable services: tick failed")
        self.ticks += 1
        return full, report

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
        self.connection = KeptConnection(using)

    def run(self) -> None:
        """Every ``HEARTBEAT_SECONDS``, push the leases of active runs out again."""
        settings = get_settings()
        extended: dict[str, float] = {}  # run id -> when its lease was last pushed out (monotonic)
        beat = time.monotonic()
        while not self.stopping.wait(settings.HEARTBEAT_SECONDS):
            previous, beat = beat, time.monotonic()
            ids = list(self.active)
            if not ids:
                extended.clear()
                continue
            for run_id in ids:  # claimed since the previous beat: its lease began after that beat
                extended.setdefault(run_id, previous)
            try:
                with self.connection.use():
                    cancelled = claims.extend_leases(self.owner, ids, get_settings().LEASE_SECONDS, self.using)
                active.cancelled.update(cancelled)
            except DatabaseError as exc:
                logger.warning("durable heartbeat: database error: %s", exc)
            except Exception:
                logger.exception("durable heartbeat: failed; retrying next beat")
            else:
                self._check_gaps(ids, extended)
        connections.close_all()

    def _check_gaps(self, ids: list[str], extended: dict[str, float]) -> None:
        """Report each run whose lease went longer than half of it without an extension.

        The process stalled (CPU starvation, a blocked database): a reaper may have taken
        the run back meanwhile, and a step body may then run twice (``lease_at_risk``).
        """
        now = time.monotonic()
        limit = get_settings().LEASE_SECONDS / 2
        for run_id in ids:
            gap = now - extended[run_id]
            if gap > limit:
                logger.warning(
                    "durable heartbeat (pid %d): the lease of run %s was extended %.1f s after the previous "
                    "extension (lease %.1f s): this process stalled",
                    os.getpid(), run_id, gap, get_settings().LEASE_SECONDS,
                )  # fmt: skip
                signals.send(signals.lease_at_risk, "", run_id, gap=gap, pid=os.getpid())
            extended[run_id] = now
        for gone in set(extended) - set(ids):
            del extended[gone]


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
