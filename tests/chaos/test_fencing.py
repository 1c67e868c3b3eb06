"""A worker cut off from the database and the broker mid-step: fencing refuses its late writes.

The stale worker runs in its own network namespace (a veth pair to this machine, socat
forwarders to the services). Two runs of ``chaos.fenced`` reach their step in it: one
plain, one ``atomic=True``; their bodies hold until the test releases them. The test takes
the link down, and a worker on the root namespace takes both runs over once their leases
expire and completes them. Then the link comes back and the bodies are released: the stale
executions finish their bodies and try to checkpoint. Both writes are refused.
"""

import re
import uuid

import pytest
from django.db import connection

from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.testapp import chaos_tasks
from tests.testapp.models import ChaosAttempt, ChaosClaim, ChaosCounter

from . import harness, procs
from .netns import Namespace

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.fixture
def namespace():
    ns = Namespace("fence")
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def queue(use_broker):
    """A queue of its own, deleted after the workers stopped (RabbitMQ keeps durable queues)."""
    name = f"fence-{uuid.uuid4().hex[:8]}"
    yield name
    procs.delete_queue(use_broker, name)


@pytest.fixture
def start_worker(tmp_path, queue):
    started: list[procs.Worker] = []

    def start(env, name, prefix=None):
        worker = procs.Worker(env, tmp_path / f"{name}.log", name, concurrency=2, prefix=prefix)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_fencing__a_cut_off_workers_late_checkpoints_are_refused(
    use_broker, chaos_db, tmp_path, namespace, queue, start_worker
):
    env = harness.worker_env(broker=use_broker, db_name=chaos_db, queue=queue, tag="fence")
    gate = tmp_path / "gate"
    gate.mkdir()
    stale_env = {
        **env,
        "DURABLE_TEST_GATE_DIR": str(gate),
        "DURABLE_TEST_PG_HOST": namespace.host_ip,
        "DURABLE_TEST_BROKER_URL": namespace.url(use_broker),
    }
    stale = start_worker(stale_env, "stale", prefix=namespace.prefix)
    plain = chaos_tasks.fenced.apply_async(("plain",), queue=env["DURABLE_TEST_QUEUE"])
    atomic = chaos_tasks.fenced.apply_async(("atomic",), queue=env["DURABLE_TEST_QUEUE"])
    for run_id, name in ((plain.id, "plain"), (atomic.id, "atomic")):
        procs.wait_for(lambda r=run_id, n=name: (gate / f"{r}.{n}.held").exists(), 60, f"{name} step to start")
    stale_pids = stale.pids()

    namespace.cut()  # mid-step: the stale worker can reach neither the database nor the broker
    fresh = start_worker(env, "fresh")
    finished = Run.objects.filter(id__in=[plain.id, atomic.id], status=RunStatus.COMPLETED)
    procs.wait_for(lambda: finished.count() == 2, 90, "the fresh worker to take over and finish both runs")
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (before_heal,) = cursor.fetchone()
    fresh_pids = fresh.pids()
    taken_over = {c.run_id: c.pid for c in ChaosClaim.objects.filter(execution=2)}
    assert set(taken_over) == {plain.id, atomic.id} and set(taken_over.values()) <= fresh_pids

    namespace.heal()
    (gate / "release").write_text("")
    for run_id, name in ((plain.id, "plain"), (atomic.id, "atomic")):
        procs.wait_for(
            lambda r=run_id: re.search(f"durable run {r}: .*this execution stops", stale.log.read_text()),
            90,
            f"the stale execution of the {name} run to try its checkpoint and stop",
        )
        # The stale body ran to its end (after the takeover) in the stale worker.
        assert int((gate / f"{run_id}.{name}.ran").read_text()) in stale_pids

    # The plain step: the stale body ran (counter 2, its attempt is the stale worker's), but
    # the checkpoint is the new owner's, written before the link came back.
    checkpoint = Step.objects.get(run_id=plain.id, step_id="plain")
    attempts = {a.n: a.pid for a in ChaosAttempt.objects.filter(run_id=plain.id)}
    assert ChaosCounter.objects.get(run_id=plain.id).count == 2
    assert attempts[1] in stale_pids and attempts[2] in fresh_pids
    assert checkpoint.output_value == {"n": 2, "pid": attempts[2]}
    assert checkpoint.finished_at < before_heal
    # The atomic step: the stale body's writes were rolled back with its refused checkpoint.
    checkpoint = Step.objects.get(run_id=atomic.id, step_id="atomic")
    assert ChaosCounter.objects.get(run_id=atomic.id).count == 1
    assert list(ChaosAttempt.objects.filter(run_id=atomic.id).values_list("pid", flat=True)) == [
        checkpoint.output_value["pid"]
    ]
    assert checkpoint.output_value["pid"] in fresh_pids
    for result in (plain, atomic):
        run = Run.objects.get(id=result.id)
        assert (run.status, run.generation, Step.objects.filter(run_id=run.id).count()) == ("completed", 2, 1)
    assert Run.objects.get(id=plain.id).result_value == 2
    assert Run.objects.get(id=atomic.id).result_value == 1
    assert stale.alive()  # it lived through it, and runs what comes next
