"""Durable tasks of the chaos suite (tests/chaos): a mixed workload whose bodies count themselves.

Every step body starts with one statement that increments its (run, step) counter and logs
the attempt (pid, database-clock start) in ``ChaosAttempt``; it returns the counter value,
so the checkpointed output names the attempt that won. Atomic steps do the same inside
their transaction: a rolled-back attempt leaves no trace, so their counter must be exactly 1.
PostgreSQL only (the chaos suite runs there).
"""

import json
import os
import time
from pathlib import Path

from django.db import connection
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from celery_durable import Batch, Concurrency, durable_task, signals, step

from .models import ChaosAttempt, ChaosClaim, ChaosCounter, ChaosFault

# Fast step retries: a body that met a dropped connection or a restarting database retries.
RETRIES = {"retries": 20, "retry_backoff": False, "default_retry_delay": 0.3}
EVENT = "chaos.go"
LIMIT = 2  # Concurrency(limit=LIMIT, key="key") of chaos.limited
CHILDREN = 3  # chaos.parent gathers this many children after invoking one

_START = (
    "WITH c AS ("
    f" INSERT INTO {ChaosCounter._meta.db_table} (run_id, step, count) VALUES (%s, %s, 1)"
    f" ON CONFLICT (run_id, step) DO UPDATE SET count = {ChaosCounter._meta.db_table}.count + 1"
    " RETURNING count)"
    f" INSERT INTO {ChaosAttempt._meta.db_table} (run_id, step, n, pid, atomic, key, started)"
    " SELECT %s, %s, c.count, %s, %s, %s, clock_timestamp() FROM c RETURNING id, n"
)
_END = f"UPDATE {ChaosAttempt._meta.db_table} SET ended = clock_timestamp() WHERE id = %s"


def _attempt(name: str, hold: float, key: str | None, atomic: bool) -> dict:
    run_id = step.run_id
    with connection.cursor() as cursor:
        cursor.execute(_START, [run_id, name, run_id, name, os.getpid(), atomic, key])
        attempt_id, n = cursor.fetchone()
    if hold:
        time.sleep(hold)  # a window for the faults to land inside the body
    with connection.cursor() as cursor:
        cursor.execute(_END, [attempt_id])
    return {"n": n, "pid": os.getpid()}


def tick(name: str, hold: float = 0.0, key: str | None = None) -> dict:
    """A plain step body (at-least-once): count, hold, return the attempt number."""
    return _attempt(name, hold, key, atomic=False)


def tick_atomic(name: str) -> dict:
    """The body of an ``atomic=True`` step: its count commits with the checkpoint or not at all."""
    return _attempt(name, 0.0, None, atomic=True)


@durable_task(name="chaos.pipeline", **RETRIES)
def pipeline(n, nap):
    step.run("a", tick, "a", 0.1)
    step.run("atomic-b", tick_atomic, "atomic-b", atomic=True)
    step.sleep("nap", nap)
    step.run("c", tick, "c", 0.05)
    return n


@durable_task(name="chaos.waiter", **RETRIES)
def waiter(n):
    step.run("before", tick, "before")
    event = step.wait_for_event("evt", EVENT, match={"n": n}, timeout=3600)
    step.run("atomic-after", tick_atomic, "atomic-after", atomic=True)
    return None if event is None else event.data["token"]


@durable_task(name="chaos.child", **RETRIES)
def child(n, i):
    step.run("work", tick, "work", 0.05)
    step.run("atomic-book", tick_atomic, "atomic-book", atomic=True)
    return n * 10 + i


@durable_task(name="chaos.parent", **RETRIES)
def parent(n):
    step.run("pre", tick, "pre")
    one = step.invoke("one", child.s(n, 0))
    many = step.gather("many", [child.s(n, i) for i in range(1, CHILDREN + 1)])
    step.run("post", tick, "post")
    return [one, *many]


@durable_task(name="chaos.limited", concurrency=Concurrency(limit=LIMIT, key="key"), **RETRIES)
def limited(key, n):
    step.run("w1", tick, "w1", 0.15, key)
    step.sleep("rest", 0.2)  # sleeping holds no slot: the run takes one again to go on
    step.run("w2", tick, "w2", 0.15, key)
    return n


@durable_task(name="chaos.cancellable", **RETRIES)
def cancellable(n, pause):
    """Eight steps, a sleep, four steps: the test cancels some while they run or sleep."""
    for i in range(8):
        step.run(f"s{i}", tick, f"s{i}", 0.1)
    step.sleep("pause", pause)
    for i in range(8, 12):
        step.run(f"s{i}", tick, f"s{i}", 0.1)
    return n


@durable_task(name="chaos.batched", batch=Batch(max_size=3, wait=0.5, key="key"), **RETRIES)
def batched(items):
    """Up to three calls of one key in one run: the checker finds each call in exactly one batch."""
    step.run("work", tick, "work", 0.05)
    return sorted(item["n"] for item in items)


def _hold_while_cut_off(name: str) -> None:
    """In the fenced worker only (``DURABLE_TEST_GATE_DIR``): wait for the test's release file.

    The body then goes on after its worker was cut off and its run taken over; it leaves a
    marker file (not the database: an atomic step's writes are rolled back) saying it ran.
    """
    gate = os.environ.get("DURABLE_TEST_GATE_DIR")
    if not gate:
        return
    (Path(gate) / f"{step.run_id}.{name}.held").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not (Path(gate) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _mark_ran(name: str) -> None:
    gate = os.environ.get("DURABLE_TEST_GATE_DIR")
    if gate:
        (Path(gate) / f"{step.run_id}.{name}.ran").write_text(str(os.getpid()))


@durable_task(name="chaos.fenced", **RETRIES)
def fenced(mode):
    """One step, plain or atomic, that a cut-off worker finishes late (test_fencing)."""

    def plain():
        out = tick("plain")
        _hold_while_cut_off("plain")
        _mark_ran("plain")
        return out

    def atomic():
        _hold_while_cut_off("atomic")  # before any write: the transaction holds no lock yet
        out = tick_atomic("atomic")
        _mark_ran("atomic")
        return out

    if mode == "plain":
        return step.run("plain", plain)["n"]
    return step.run("atomic", atomic, atomic=True)["n"]


def _claimed(sender, run_id, task_name, execution=1, **kwargs):
    if task_name.startswith("chaos."):
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {ChaosClaim._meta.db_table} (run_id, execution, pid, at) "
                "VALUES (%s, %s, %s, clock_timestamp())",
                [run_id, execution, os.getpid()],
            )


def _stalled(sender, run_id, gap, pid, **kwargs):
    """A stall the machine caused (the heartbeat came late): a fault hitting ``pid``, as a freeze would."""
    if os.environ.get("DURABLE_TEST_CHAOS_TAG"):
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {ChaosFault._meta.db_table} (kind, at, until, pids, detail) "
                "VALUES ('stall', clock_timestamp() - make_interval(secs => %s), clock_timestamp(), %s, %s)",
                [gap, json.dumps([pid]), json.dumps({"run": run_id, "gap": gap})],
            )


signals.lease_at_risk.connect(_stalled, dispatch_uid="chaos-stall")
signals.run_started.connect(_claimed, dispatch_uid="chaos-claim-started")
signals.run_resumed.connect(_claimed, dispatch_uid="chaos-claim-resumed")

# Chaos workers name their PostgreSQL sessions "<tag>:<pid>", so the harness can drop the
# connections of chosen processes of this test only (pg_terminate_backend).
_TAG = os.environ.get("DURABLE_TEST_CHAOS_TAG")


@receiver(connection_created, dispatch_uid="chaos-application-name")
def _name_session(sender, connection, **kwargs):
    if _TAG and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('application_name', %s, false)", [f"{_TAG}:{os.getpid()}"])
