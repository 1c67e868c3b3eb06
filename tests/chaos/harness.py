"""One chaos session: workers, the workload, the faults, the drain. Shared by tests/chaos and bench/chaos.py.

The fleet: ``w0`` and ``w1`` in the root namespace (``w1``'s services thread reads a
jumpable clock), ``w2`` in a network namespace of its own (cut off by ``cut_off``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from celery_durable.models import BatchItem, Run
from celery_durable.states import FINISHED as FINISHED_STATUSES
from tests.testapp.models import ChaosClaim, ChaosFault

from . import diagnosis, procs
from .checker import TASKS
from .config import HEARTBEAT, LEASE, REPUBLISH, WAKER
from .faults import Injector
from .netns import Namespace
from .seeds import streams
from .workload import Workload

# Every fault kind once (the short form), the broker's restart added per broker.
PLAN = ["kill_child", "kill_worker", "duplicate", "drop_connections", "clock_jump", "freeze", "cut_off",
        "kill_child", "duplicate", "clock_jump", "drop_connections", "pg_restart"]  # fmt: skip


def restart_of(broker: str) -> str:
    """The fault kind that restarts ``broker`` (a broker URL)."""
    return "redis_restart" if broker.startswith("redis") else "rabbitmq_restart"


def short_plan(seed: int, broker: str) -> list[str]:
    """The short form's faults: every kind of :data:`PLAN` and the broker's restart, in the seed's order."""
    kinds = [*PLAN, restart_of(broker)]
    return streams(seed).plan.sample(kinds, len(kinds))


def not_landed(plan: list[str], counts: dict[str, int], *, require: bool) -> list[str]:
    """The kinds of ``plan`` that never landed. A restart skipped while others used the
    services (``<kind>:skipped``) counts as landed, unless ``require`` (CI) is set."""
    return sorted(kind for kind in set(plan) if not counts.get(kind) and (require or not counts.get(f"{kind}:skipped")))


def worker_env(*, broker: str, db_name: str, queue: str, tag: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DURABLE_TEST_DB": "postgres",
        "DURABLE_TEST_PG_NAME": db_name,
        "DURABLE_TEST_BROKER_URL": broker,
        "DURABLE_TEST_QUEUE": queue,
        "DURABLE_TEST_CHAOS_TAG": tag,
        "DURABLE_TEST_LEASE_SECONDS": str(LEASE),
        "DURABLE_TEST_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "DURABLE_TEST_WAKER_INTERVAL": str(WAKER),
        "DURABLE_TEST_REPUBLISH_AFTER": str(REPUBLISH),
        "PYTHONPATH": str(procs.ROOT),
    }


class Fleet:
    """The chaos workers; :meth:`close` kills and reaps every worker and removes the namespace."""

    CONCURRENCY = {"w0": 3, "w1": 3, "w2": 2}

    def __init__(self, *, broker: str, db_name: str, directory: Path, netns: bool = True) -> None:
        self.tag = f"chaos{uuid.uuid4().hex[:8]}"
        self.queue = f"chaos-{self.tag}"
        self.broker = broker
        self.env = worker_env(broker=broker, db_name=db_name, queue=self.queue, tag=self.tag)
        self.dir = directory
        self.clock_file = directory / "services-clock"
        self.clock_file.write_text("0")
        self.workers: dict[str, procs.Worker] = {}
        self.started: list[procs.Worker] = []
        self.ns: Namespace | None = None
        try:
            if netns:
                self.ns = Namespace(self.tag[-6:])
            for name in self.CONCURRENCY:
                if name != "w2" or self.ns is not None:
                    self.workers[name] = self.start(name)
        except BaseException:
            self.close()
            raise

    def start(self, name: str) -> procs.Worker:
        env = dict(self.env)
        prefix = None
        if name == "w1":
            env["DURABLE_TEST_SERVICES_CLOCK"] = str(self.clock_file)
        if name == "w2":
            assert self.ns is not None
            env["DURABLE_TEST_PG_HOST"] = self.ns.host_ip
            env["DURABLE_TEST_BROKER_URL"] = self.ns.url(self.broker)
            prefix = self.ns.prefix
        # A node name of its own: RabbitMQ may still hold the exclusive pidbox queue of the
        # worker it replaces for a moment (Celery then exits: "ResourceLocked").
        node = f"{name}-{len(self.started)}"
        worker = procs.Worker(env, self.dir / f"{node}.log", node, self.CONCURRENCY[name], prefix)
        self.started.append(worker)
        worker.wait_ready()
        return worker

    def injector(self, rng: random.Random, allow_restarts: bool = True) -> Injector:
        return Injector(
            rng, self.workers, self.start, tag=self.tag, queue=self.queue, lease=LEASE, ns=self.ns,
            cut_worker="w2" if self.ns is not None else None, clock_file=self.clock_file,
            allow_restarts=allow_restarts,
        )  # fmt: skip

    def close(self) -> None:
        for worker in self.started:
            worker.stop()
        if self.ns is not None:
            self.ns.close()
            self.ns = None
        procs.delete_queue(self.broker, self.queue)


@dataclass
class Session:
    workload: Workload
    injector: Injector
    seconds: float
    drained: bool = False
    unfinished: list[str] = field(default_factory=list)
    diagnosis: str = ""  # why the unfinished runs are stuck (diagnosis.stuck)


def run(fleet: Fleet, seed: int, seconds: float, plan: list[str] | None, *, rate: float = 2.0,
        fault_every: float = 3.0, drain_timeout: float = 180.0, allow_restarts: bool = True,
        progress=None) -> Session:  # fmt: skip
    """Run the workload for ``seconds`` with faults (``plan`` in order, or random kinds
    forever), then undo the faults, send the remaining events and cancels, and wait until
    every chaos run has finished (or ``drain_timeout`` passes: the checker reports the rest).

    Every random choice comes from ``seed`` (:mod:`tests.chaos.seeds`), one stream per use."""
    rngs = streams(seed)
    workload = Workload(rngs.workload, fleet.queue)
    injector = fleet.injector(rngs.faults, allow_restarts)
    rng = rngs.schedule
    kinds = [*PLAN, restart_of(fleet.broker)]
    queue = list(plan) if plan is not None else []
    start = time.monotonic()
    next_fault = start + fault_every
    while time.monotonic() - start < seconds:
        workload.step(spawn=rng.random() < rate * 0.1)
        injector.tick()
        if time.monotonic() >= next_fault:
            if plan is None and not queue:
                queue = rng.sample(kinds, len(kinds))
            if queue:
                injector.inject(queue.pop(0))
            next_fault = time.monotonic() + fault_every * rng.uniform(0.5, 1.5)
        if progress is not None:
            progress(workload, injector)
        time.sleep(0.1)
    while queue and plan is not None:  # a short form injects its whole plan
        injector.inject(queue.pop(0))
        injector.tick()
    injector.settle()
    workload.finish()
    session = Session(workload, injector, seconds)
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline:
        workload.step(spawn=False)
        # Still the supervisor: a worker that exits now (Celery gives up after the broker
        # restart that a short form injects last) is restarted, or nothing drains the runs.
        injector.tick()
        if not workload.outstanding and not unfinished():
            session.drained = True
            break
        time.sleep(0.25)
    session.unfinished = unfinished()
    session.diagnosis = diagnosis.stuck(session.unfinished, fleet.tag, fleet.started)
    return session


def unfinished() -> list[str]:
    """Chaos runs not finished, and batched calls whose batch has not formed yet."""
    runs = Run.objects.filter(task_name__in=TASKS).exclude(status__in=FINISHED_STATUSES).values_list("id", flat=True)
    forming = BatchItem.objects.filter(task_name="chaos.batched", run__isnull=True).values_list("id", flat=True)
    return [*runs, *forming]


def recoveries() -> list[tuple[float, float]]:
    """Per run a worker kill interrupted: (its lease expiry -> its next claim, the kill -> that
    claim), in seconds of the database clock. The first is negative when a reaper whose clock
    ran ahead (``clock_jump``) requeued the run before its lease really expired."""
    found = []
    for fault in ChaosFault.objects.filter(kind__in=["kill_child", "kill_worker"]):
        for run_id, (expires, executions) in json.loads(fault.detail).get("runs", {}).items():
            claim = ChaosClaim.objects.filter(run_id=run_id, execution__gt=executions).order_by("at").first()
            if claim is not None:
                expiry = (claim.at - datetime.fromisoformat(expires)).total_seconds()
                found.append((expiry, (claim.at - fault.at).total_seconds()))
    return found


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]
