"""Suspension with real workers on Redis and RabbitMQ: sleeps hold no worker, crashes while
sleeping change nothing, gathers survive a killed worker, cancellation at each status."""

import pytest

from celery_durable import RunCancelled, cancel, get_run, send_event
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows, tasks
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e


def status_is(run_id, status):
    return lambda: get_run(run_id).status == status


def test_sleep__holds_no_worker_and_wakes_on_time(e2e_env, workers):
    workers("solo", pool="solo")  # one process: a held slot would block everything
    sleeper = flows.sleep_then_steps.apply_async((3,), queue=e2e_env["queue"])
    wait_for(status_is(sleeper.id, RunStatus.SLEEPING), 30, "the run to sleep")
    other = tasks.add.apply_async((2, 2), queue=e2e_env["queue"])
    assert other.get(timeout=30) == 4  # ran while the first run slept
    assert get_run(sleeper.id).status == RunStatus.SLEEPING
    assert sleeper.get(timeout=60) == sleeper.id
    nap = Step.objects.get(run_id=sleeper.id, step_id="nap")
    wake_at = nap.output_value["wake_at"]
    resumed = nap.finished_at
    assert resumed >= wake_at  # never early
    lateness = (resumed - wake_at).total_seconds()
    assert lateness < 10, lateness  # documented: about WAKER_INTERVAL (0.5 s here); generous for a loaded CI box
    assert get_run(sleeper.id).executions == 2


def test_worker_killed_while_a_run_sleeps__changes_nothing(e2e_env, workers):
    first = workers("first")
    run = flows.sleepy.apply_async((3,), queue=e2e_env["queue"])
    wait_for(status_is(run.id, RunStatus.SLEEPING), 30, "the run to sleep")
    first.kill()
    workers("second")
    assert run.get(timeout=60) == 2
    assert BodyRun.objects.filter(run_id=run.id, step="before").count() == 1
    assert BodyRun.objects.filter(run_id=run.id, step="after").count() == 1
    assert get_run(run.id).recoveries == 0  # nothing was running when the worker died


def test_gather__survives_a_worker_killed_mid_child(e2e_env, workers):
    first = workers("first", concurrency=4)
    parent = flows.gather_held.apply_async((3,), queue=e2e_env["queue"])
    wait_for(lambda: BodyRun.objects.filter(step__startswith="work-").count() == 3, 60, "three children to start")
    first.kill()  # all three children die mid-step
    for i in range(3):
        BodyRun.objects.create(run_id="test", step=f"release-{i}")
    workers("second", concurrency=4)
    assert parent.get(timeout=90) == [0, 10, 20]  # in order
    children = Run.objects.filter(parent_id=parent.id)
    assert sorted(c.status for c in children) == ["completed"] * 3
    # Each child was claimed again after the kill: by the reaper's requeue (recoveries 1) or,
    # once its lease expired, by the broker's redelivery of its unacked message (recoveries 0).
    assert all(c.executions >= 2 for c in children), [(c.executions, c.recoveries) for c in children]


def test_event__resumes_a_waiting_run_on_a_worker(e2e_env, workers):
    workers("events")
    run = flows.confirm.apply_async((5,), queue=e2e_env["queue"])
    wait_for(status_is(run.id, RunStatus.WAITING), 30, "the run to wait")
    send_event("user.confirmed", {"user_id": 5})
    assert run.get(timeout=60) == 5


@pytest.mark.parametrize("status", ["queued", "sleeping", "waiting", "running"])
def test_cancel__at_each_status(e2e_env, workers, status):
    queue = e2e_env["queue"]
    if status == "queued":
        run = flows.sleepy.apply_async((1,), queue=queue)
        cancel(run.id)
        workers("late")
    elif status == "sleeping":
        workers("w")
        run = flows.sleepy.apply_async((3600,), queue=queue)
        wait_for(status_is(run.id, RunStatus.SLEEPING), 30, "the run to sleep")
        cancel(run.id)
    elif status == "waiting":
        workers("w")
        run = flows.confirm.apply_async((9,), queue=queue)
        wait_for(status_is(run.id, RunStatus.WAITING), 30, "the run to wait")
        cancel(run.id)
    else:
        workers("w")
        run = tasks.slow_step_chain.apply_async((120.0,), queue=queue)
        wait_for(lambda: BodyRun.objects.filter(run_id=run.id, step="two").exists(), 30, "step two to run")
        cancel(run.id, "stop it")
        assert get_run(run.id).status == RunStatus.RUNNING  # it stops at the next step boundary
        BodyRun.objects.create(run_id=run.id, step="release")
    with pytest.raises(RunCancelled):
        run.get(timeout=60)
    record = get_run(run.id)
    assert record.status == RunStatus.CANCELLED
    assert BodyRun.objects.filter(run_id=run.id, step__in=["after", "welcome", "three"]).count() == 0


def test_invoke_and_gather__with_durable_and_plain_children(e2e_env, workers):
    workers("family", concurrency=4)
    run = flows.parent.apply_async((5,), queue=e2e_env["queue"])
    assert run.get(timeout=60) == {"total": 10, "gathered": [1, 2, 3, 20]}
    plain = Run.objects.get(parent_id=run.id, durable=False)
    assert (plain.task_name, plain.status, plain.result_value) == ("t.plain", "completed", 20)


def test_failed_plain_child__raises_child_run_failed_in_the_parent(e2e_env, workers):
    workers("failing")
    run = flows.parent_of_failure.apply_async(queue=e2e_env["queue"])
    assert run.get(timeout=60) == "ValueError: plain child broke"
