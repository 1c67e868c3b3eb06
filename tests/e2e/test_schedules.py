"""Schedules without beat under real workers: three workers' services tick, each tick runs once."""

import itertools
import os
import signal
import sys
from datetime import timedelta

import pytest

from celery_durable.models import Run, ScheduleState
from celery_durable.states import RunStatus
from tests.e2e.conftest import ROOT, wait_for
from tests.e2e.processes import spawn  # noqa: F401  (a fixture)
from tests.testapp.models import BodyRun, Interval

pytestmark = pytest.mark.e2e
PREFIX = "tests.testapp.scheduled_tasks"


def start_workers(spawner, e2e_env, names, schedules, count=3):
    """``count`` real workers (prefork, 2 processes) that declare ``schedules``; each runs the services."""
    env = {**e2e_env["env"], "DURABLE_TEST_SCHEDULES": ",".join(schedules)}
    started = []
    for index in range(count):
        name = f"{names}{index}"
        command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-I", PREFIX,
            "-P", "prefork", "-c", "2", "-n", f"{name}-{env['DURABLE_TEST_QUEUE']}@%h", "-l", "info",
            "--without-mingle", "--without-gossip", "-Q", env["DURABLE_TEST_QUEUE"],
        ]  # fmt: skip
        started.append(spawner(command, ROOT, env, e2e_env["dir"] / f"{name}.log"))
    for worker in started:
        wait_for(lambda worker=worker: " ready." in worker.output(), 60, "a worker to be ready")
    return started


def tick_runs(task_name):
    return list(Run.objects.filter(task_name=task_name).order_by("id"))


def contiguous(runs, task_name):
    """The ticks fired are every second from the first to the last, none twice (ids are the ticks).

    A tick buffered when the schedule was paused (``buffer_one``) waits in the row, not as a run.
    """
    from celery_durable.engine.schedules import tick_run_id

    row = ScheduleState.objects.get(task_name=task_name)
    ids = {run.id for run in runs}
    if row.buffered_tick_at is not None:
        ids.add(tick_run_id(task_name, row.buffered_tick_at))
    first = row.last_tick_at - timedelta(seconds=len(ids) - 1)
    expected = {tick_run_id(task_name, first + timedelta(seconds=i)) for i in range(len(ids))}
    return len(runs) == len({run.id for run in runs}) and ids == expected


def test_every_second_under_three_workers__each_tick_runs_exactly_once(e2e_env, spawn):  # noqa: F811
    name = f"{PREFIX}.every_second"
    start_workers(spawn, e2e_env, "tick", ["every_second"])
    wait_for(lambda: len(tick_runs(name)) >= 10, 60, "ten ticks")
    wait_for(
        lambda: Run.objects.filter(task_name=name).exclude(status=RunStatus.COMPLETED).count() == 0, 60, "runs done"
    )
    ScheduleState.objects.filter(task_name=name).update(paused=True)  # freeze the picture
    runs = tick_runs(name)
    assert len(runs) >= 10
    assert contiguous(runs, name)
    executions = {}
    for run_id in BodyRun.objects.filter(step="tick").values_list("run_id", flat=True):
        executions[run_id] = executions.get(run_id, 0) + 1
    done = [r.id for r in runs if r.status == RunStatus.COMPLETED]
    assert {run_id: executions.get(run_id) for run_id in done} == dict.fromkeys(done, 1)


def test_a_worker_killed_at_a_tick__the_others_go_on_and_no_tick_is_lost_or_doubled(e2e_env, spawn):  # noqa: F811
    name = f"{PREFIX}.every_second"
    workers = start_workers(spawn, e2e_env, "kill", ["every_second"])
    wait_for(lambda: len(tick_runs(name)) >= 3, 60, "three ticks")
    # SIGKILL the first worker's whole tree (its services thread with it) while it ticks.
    os.killpg(workers[0].process.pid, signal.SIGKILL)
    before = len(tick_runs(name))
    wait_for(lambda: len(tick_runs(name)) >= before + 5, 60, "five more ticks from the two left")
    ScheduleState.objects.filter(task_name=name).update(paused=True)
    wait_for(
        lambda: Run.objects.filter(task_name=name).exclude(status=RunStatus.COMPLETED).count() == 0,
        90,
        "every run to finish (a run the killed worker held is reaped after its lease)",
    )
    runs = tick_runs(name)
    assert contiguous(runs, name)
    executions = {}
    for run_id in BodyRun.objects.filter(step="tick").values_list("run_id", flat=True):
        executions[run_id] = executions.get(run_id, 0) + 1
    assert set(executions) == {r.id for r in runs}  # a checkpointed step never runs again


def intervals(policy):
    rows = Interval.objects.filter(key=policy).exclude(ended=None).order_by("started")
    by_run = {}
    for row in rows:
        start, end = by_run.get(row.run_id, (row.started, row.ended))
        by_run[row.run_id] = (min(start, row.started), max(end, row.ended))
    return sorted(by_run.values())


def overlapping(spans):
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


@pytest.mark.parametrize("policy", ["skip", "buffer_one", "cancel_other", "allow"])
def test_overlap_policy_under_three_workers(e2e_env, spawn, policy):  # noqa: F811
    name = f"{PREFIX}.slow_{policy}"
    start_workers(spawn, e2e_env, policy.replace("_", ""), [f"slow_{policy}"])
    # Each run takes ~2 s of steps; ticks come every second.
    wait_for(lambda: len(tick_runs(name)) >= 8, 90, "eight ticks")
    ScheduleState.objects.filter(task_name=name).update(paused=True)
    wait_for(
        lambda: (
            not Run.objects.filter(task_name=name)
            .exclude(status__in=[RunStatus.COMPLETED, RunStatus.SKIPPED, RunStatus.CANCELLED])
            .exists()
        ),
        90,
        "every run to end",
    )
    runs = tick_runs(name)
    statuses = [r.status for r in runs]
    spans = intervals(policy)
    if policy == "skip":
        assert RunStatus.SKIPPED in statuses and RunStatus.COMPLETED in statuses
        assert not overlapping(spans)
    elif policy == "buffer_one":
        assert RunStatus.SKIPPED in statuses and statuses.count(RunStatus.COMPLETED) >= 2
        assert not overlapping(spans)
    elif policy == "cancel_other":
        assert RunStatus.CANCELLED in statuses
        cancelled = [r for r in runs if r.status == RunStatus.CANCELLED]
        assert all("cancel_other" in r.cancel_reason for r in cancelled)
    else:
        assert set(statuses) == {RunStatus.COMPLETED}
        assert overlapping(spans)
    assert contiguous(runs, name)
