"""Fault injection for the chaos suite; each fault is recorded in ``ChaosFault`` with the pids it hit.

Faults that restart a shared service (Redis, RabbitMQ, PostgreSQL) first make sure nobody
else's tests or benchmarks run on this machine; when someone does (or restarts are
disallowed), the fault is skipped and recorded as ``<kind>:skipped``; under
``CELERY_DURABLE_REQUIRE_SERVICES=1`` (CI, where nothing else runs) a skip is a failure:
:class:`RestartSkipped`. A stopped service is always started again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

from celery.app.task import Task
from django.db import DatabaseError, connection

from celery_durable.integration.publish import NUDGE_HEADER
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.testapp.models import ChaosAttempt, ChaosFault

from . import clock, procs
from .netns import Namespace

RESTARTS = {"redis_restart": "redis", "rabbitmq_restart": "rabbitmq", "pg_restart": "postgres"}
REQUIRE_ENV = "CELERY_DURABLE_REQUIRE_SERVICES"


class RestartSkipped(AssertionError):
    """A service restart of the plan could not happen while services are required."""


def required() -> bool:
    """Whether a skipped restart fails the session (``CELERY_DURABLE_REQUIRE_SERVICES=1``)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def may_restart(kind: str, others: list[str], *, allowed: bool, require: bool) -> bool:
    """Whether the restart ``kind`` goes ahead now; ``False``: skip it (recorded as ``<kind>:skipped``).

    ``others``: the competing test runs and benchmarks (:func:`procs.others_running`);
    ``allowed``: restarts not disallowed by the caller. With ``require``, a skip raises
    :class:`RestartSkipped` naming the kind and the competing processes instead.
    """
    if allowed and not others:
        return True
    if require:
        if others:
            shown = "; ".join(others[:5]) + (f"; and {len(others) - 5} more" if len(others) > 5 else "")
            why = f"{len(others)} other test run or benchmark process(es) use the services: {shown}"
        else:
            why = "restarts are disallowed"
        raise RestartSkipped(f"{kind} could not run ({why}) and {REQUIRE_ENV}=1 demands every restart")
    return False


def now() -> datetime:
    return datetime.now(UTC)


def reconnect() -> None:
    """The test process's own connection after the database restarted: a new session."""
    connection.close()
    procs.wait_for(_db_answers, 60, "PostgreSQL to answer")


def _db_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        connection.close()
        return False


class Injector:
    """Injects faults into a fleet of workers. ``fleet`` maps names to :class:`procs.Worker`.

    ``replace(name)`` starts a worker in place of a killed one. ``ns``/``cut_worker``: the
    worker on its own network namespace; ``clock_file``: the services clock of one worker.
    """

    def __init__(
        self,
        rng: Random,
        fleet: dict[str, procs.Worker],
        replace: Callable[[str], procs.Worker],
        *,
        tag: str,
        queue: str,
        lease: float,
        ns: Namespace | None = None,
        cut_worker: str | None = None,
        clock_file: Path | None = None,
        allow_restarts: bool = True,
        require_restarts: bool | None = None,
    ) -> None:
        self.rng = rng
        self.fleet = fleet
        self.replace = replace
        self.tag = tag
        self.queue = queue
        self.lease = lease
        self.ns = ns
        self.cut_worker = cut_worker
        self.clock_file = clock_file
        self.allow_restarts = allow_restarts
        self.require_restarts = required() if require_restarts is None else require_restarts
        self.pending: list[tuple[float, Callable[[], None]]] = []  # (monotonic time, undo)
        self.busy: set[str] = set()  # workers frozen or cut off now
        self.counts: dict[str, int] = {}
        self.watched = 0.0

    # --- bookkeeping ------------------------------------------------------------------

    def record(self, kind: str, at: datetime, pids: Any, until: datetime | None = None, **detail: Any) -> ChaosFault:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return ChaosFault.objects.create(
            kind=kind, at=at, until=until, pids=json.dumps(pids if pids == "*" else sorted(pids)),
            detail=json.dumps(detail, default=str),
        )  # fmt: skip

    def tick(self) -> None:
        """Undo the faults whose time is up (thaw a frozen worker, heal a cut link), and restart
        a worker that exited on its own, as a process supervisor would."""
        due = [item for item in self.pending if item[0] <= time.monotonic()]
        self.pending = [item for item in self.pending if item[0] > time.monotonic()]
        for _at, undo in due:
            undo()
        if time.monotonic() - self.watched < 1:
            return
        self.watched = time.monotonic()
        for name, worker in list(self.fleet.items()):
            if worker.alive():
                worker.pool()  # remember its processes
            elif name not in self.busy:
                # Celery gave up (e.g. RabbitMQ refusing its pidbox queue after a partition):
                # a consequence of an earlier fault, recorded with every process it had.
                worker.kill()
                self.record("worker_exited", now(), {worker.pid, *worker.seen}, worker=name)
                self.fleet[name] = self.replace(name)

    def settle(self) -> None:
        """Undo every fault still in effect (before the drain), and set the services clock right."""
        for _at, undo in self.pending:
            undo()
        self.pending = []
        if self.clock_file is not None:
            clock.jump(self.clock_file, 0)

    def inject(self, kind: str) -> None:
        getattr(self, kind)()

    def _free_workers(self) -> list[str]:
        return [n for n, w in self.fleet.items() if w.alive() and n not in self.busy and n != self.cut_worker]

    def _leases(self, pids: set[int]) -> dict[str, Any]:
        """Runs whose lease a killed process held: their lease expiry (recovery-time figures)."""
        if not pids:
            return {}
        pattern = ":(" + "|".join(str(p) for p in pids) + "):"
        rows = Run.objects.filter(status=RunStatus.RUNNING, lease_owner__regex=pattern)
        return {r: [exp.isoformat(), n] for r, exp, n in rows.values_list("id", "lease_expires_at", "executions")}

    def _executing(self, pids: set[int]) -> list[int]:
        """Pids among ``pids`` executing a run right now: holding its lease, or inside a step body."""
        recent = now() - timedelta(seconds=30)
        rows = ChaosAttempt.objects.filter(ended__isnull=True, started__gt=recent, pid__in=pids)
        found = set(rows.values_list("pid", flat=True))
        owners = Run.objects.filter(status=RunStatus.RUNNING, lease_owner__isnull=False)
        found |= {int(owner.rsplit(":", 2)[1]) for owner in owners.values_list("lease_owner", flat=True)}
        return sorted(found & pids)

    # --- the faults -------------------------------------------------------------------

    def kill_child(self) -> None:
        """SIGKILL one pool process, inside a step body when one is running (Celery forks another)."""
        names = [n for n in self.fleet if self.fleet[n].alive() and n not in self.busy]
        pool = {pid for n in names for pid in self.fleet[n].pool()}
        if not pool:
            return
        targets = self._executing(pool) if self.rng.random() < 0.7 else []
        pid = self.rng.choice(targets or sorted(pool))
        at = now()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        procs.wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30, f"pool process {pid} to die")
        self.record("kill_child", at, {pid}, runs=self._leases({pid}))

    def kill_worker(self) -> None:
        """SIGKILL a whole worker (parent and pool); a new worker takes its place."""
        names = self._free_workers()
        if not names:
            return
        executing = [n for n in names if self._executing(self.fleet[n].pool())]
        name = self.rng.choice(executing if executing and self.rng.random() < 0.7 else names)
        worker = self.fleet[name]
        pids = worker.pids()
        at = now()
        worker.kill()
        self.record("kill_worker", at, pids, runs=self._leases(pids), worker=name)
        self.fleet[name] = self.replace(name)

    def duplicate(self) -> None:
        """Publish the messages of a few runs again (a broker redelivery, a double publish)."""
        runs = list(Run.objects.filter(task_name__startswith="chaos.").values_list("id", "task_name", "args", "kwargs"))
        from celery import current_app

        chosen = self.rng.sample(runs, min(len(runs), 5))
        for run_id, task_name, args, kwargs in chosen:
            Task.apply_async(
                current_app.tasks[task_name], args=json.loads(args), kwargs=json.loads(kwargs),
                task_id=run_id, queue=self.queue, headers={NUDGE_HEADER: True},
            )  # fmt: skip
        self.record("duplicate", now(), set(), runs=[c[0] for c in chosen])

    def drop_connections(self) -> None:
        """pg_terminate_backend of some of our workers' sessions (named ``<tag>:<pid>``)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE %s",
                [f"{self.tag}:%"],
            )
            sessions = cursor.fetchall()
            if not sessions:
                return
            chosen = self.rng.sample(sessions, max(1, len(sessions) // 2))
            at = now()
            for backend, _name in chosen:
                cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
        self.record("drop_connections", at, {int(name.rsplit(":", 1)[1]) for _b, name in chosen})

    def clock_jump(self) -> None:
        """Jump the waker's clock of one worker: back by minutes or hours, or forward by less
        than the lease's margin (a jump of a whole lease is a documented limit, docs/limits.md)."""
        if self.clock_file is None:
            return
        offset = self.rng.choice([-3600.0, -300.0, -30.0, 0.0, 1.0, 0.3 * self.lease])
        clock.jump(self.clock_file, offset)
        self.record("clock_jump", now(), set(), offset=offset)

    def freeze(self) -> None:
        """SIGSTOP a worker for longer than the lease (a stalled host), then SIGCONT it."""
        names = self._free_workers()
        if len(names) < 2:
            return  # keep one worker of the root namespace going
        name = self.rng.choice(names)
        worker = self.fleet[name]
        pids = worker.pids()
        at = now()
        worker.freeze()
        self.busy.add(name)
        seconds = self.lease + 2

        def thaw() -> None:
            worker.thaw()
            self.busy.discard(name)

        self.pending.append((time.monotonic() + seconds, thaw))
        self.record("freeze", at, pids, until=at + timedelta(seconds=seconds), worker=name)

    def cut_off(self) -> None:
        """Cut the namespaced worker off from the database and the broker, longer than the lease."""
        if self.ns is None or self.cut_worker in self.busy or not self.fleet[self.cut_worker].alive():
            return
        worker = self.fleet[self.cut_worker]
        pids = worker.pids()
        at = now()
        self.ns.cut()
        self.busy.add(self.cut_worker)
        seconds = self.lease + 3

        def heal() -> None:
            assert self.ns is not None
            self.ns.heal()
            self.busy.discard(self.cut_worker)

        self.pending.append((time.monotonic() + seconds, heal))
        self.record("cut_off", at, pids, until=at + timedelta(seconds=seconds))

    def _restart(self, kind: str, outage: float) -> None:
        service = RESTARTS[kind]
        others = procs.others_running() if self.allow_restarts else []
        if not may_restart(kind, others, allowed=self.allow_restarts, require=self.require_restarts):
            self.record(f"{kind}:skipped", now(), set(), others=others[:5])
            return
        at = now()
        with procs.service_stopped(service):
            time.sleep(outage)  # the outage itself: what the workers live through
        if service == "postgres":
            reconnect()
        pids = "*" if service == "postgres" else set()
        self.record(kind, at, pids, until=now())

    def redis_restart(self) -> None:
        self._restart("redis_restart", 1.0)

    def rabbitmq_restart(self) -> None:
        self._restart("rabbitmq_restart", 1.0)

    def pg_restart(self) -> None:
        self._restart("pg_restart", 1.0)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
