"""Pause and resume with real workers on Redis and RabbitMQ: runs at every status are held
(queued, running at a step boundary, sleeping, waiting for an event, backlogged on a key),
and resume lets them go, the key's backlog in its order."""

import pytest

from celery_durable import explain, get_run, pause, resume, send_event
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e

TASKS = ("f.pause_hold", "f.sleepy", "f.confirm", "f.pausable", "f.pausable_keyed")


def status_is(run_id, status):
    return lambda: get_run(run_id).status == status


def test_pause_and_resume__runs_at_every_status(e2e_env, workers):
    queue = e2e_env["queue"]
    workers("first", concurrency=4)
    running = flows.pause_hold.apply_async((5,), queue=queue)
    wait_for(lambda: BodyRun.objects.filter(run_id=running.id, step="hold-one").exists(), 60, "step one to start")
    sleeping = flows.sleepy.apply_async((3,), queue=queue)
    waiting = flows.confirm.apply_async((9,), queue=queue)
    wait_for(status_is(sleeping.id, RunStatus.SLEEPING), 60, "the run to sleep")
    wait_for(status_is(waiting.id, RunStatus.WAITING), 60, "the run to wait")

    for name in TASKS:
        pause(name, by="e2e")
    queued = flows.pausable.apply_async((1,), queue=queue)
    keyed = [flows.pausable_keyed.apply_async((1, n), queue=queue) for n in range(3)]
    BodyRun.objects.create(run_id="test", step="release-pause")  # step one ends: a boundary
    send_event("user.confirmed", {"user_id": 9})  # the wait resolves while paused

    for run in (running, sleeping, waiting, queued, keyed[0]):
        wait_for(status_is(run.id, RunStatus.PAUSED), 60, f"run {run.id} to be paused")
    assert [get_run(r.id).status for r in keyed[1:]] == ["pending", "pending"]
    assert not BodyRun.objects.filter(step__in=["hold-two", "after", "welcome"]).exists()
    assert not BodyRun.objects.filter(run_id__in=[queued.id, *[r.id for r in keyed]]).exists()
    assert Run.objects.filter(status=RunStatus.PAUSED, lease_owner__isnull=False).count() == 0
    assert explain(keyed[1].id).gate == "paused"
    assert explain(running.id).data["by"] == "e2e"

    for name in TASKS:
        resume(name)
    assert running.get(timeout=60) == 5
    assert sleeping.get(timeout=60) == 2
    assert waiting.get(timeout=60) == 9
    assert queued.get(timeout=60) == 1
    assert [r.get(timeout=90) for r in keyed] == [0, 1, 2]
    assert BodyRun.objects.filter(run_id=running.id, step="hold-one").count() == 1  # step one kept
    steps = BodyRun.objects.filter(run_id__in=[r.id for r in keyed]).order_by("id").values_list("step", flat=True)
    assert list(steps) == ["one-0", "two-0", "one-1", "two-1", "one-2", "two-2"]
