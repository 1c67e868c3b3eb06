"""Issue 16 with real workers: the deploy check among sleeping runs, a step timeout, wait for any."""

import json
import sys

import pytest
from django.utils import timezone

from celery_durable import get_run, send_event, serialization
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.e2e.conftest import ROOT, wait_for
from tests.e2e.processes import spawn  # noqa: F401  (fixture)
from tests.testapp import deploy_tasks
from tests.testapp.models import BodyRun

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("broker", ["redis"], indirect=True)]


def check_deploy(spawn, e2e_env, version):  # noqa: F811
    """``manage.py durable_check_deploy --json`` in a process running ``version`` of dp.order."""
    env = {**e2e_env["env"], "DURABLE_TEST_DEPLOY": version}
    command = [sys.executable, "-m", "django", "durable_check_deploy", "--json", "--task", "dp.order"]
    check = spawn(command, ROOT, env, e2e_env["dir"] / f"check-{version}.log")
    code = check.process.wait(timeout=120)
    output = check.output()
    return code, json.loads(output[output.index("{") :])


def test_deploy_check__finds_the_one_broken_run_among_50_sleeping(e2e_env, workers, spawn):  # noqa: F811
    queue = e2e_env["queue"]
    first = workers("v1")
    runs = [deploy_tasks.order.apply_async((n,), queue=queue) for n in range(50)]
    ids = [run.id for run in runs]
    wait_for(lambda: Run.objects.filter(id__in=ids, status=RunStatus.SLEEPING).count() == 50, 120, "50 runs asleep")
    before = sorted(Step.objects.filter(run_id__in=ids).values_list("run_id", "step_id", "status", "output"))

    code, report = check_deploy(spawn, e2e_env, "v2")  # the audit step renamed
    assert (code, report["checked"], report["failed"]) == (1, 50, 1)
    (group,) = report["groups"]
    assert (group["task_name"], group["cause"]) == ("dp.order", "step-not-reached")
    assert [(r["run_id"], r["step_id"]) for r in group["runs"]] == [(ids[0], "audit")]  # n=0 took the audit

    code, report = check_deploy(spawn, e2e_env, "v3")  # the same change behind step.patched
    assert (code, report["checked"], report["failed"]) == (0, 50, 0)
    after = sorted(Step.objects.filter(run_id__in=ids).values_list("run_id", "step_id", "status", "output"))
    assert after == before  # the checks wrote nothing
    assert set(Run.objects.filter(id__in=ids).values_list("status", flat=True)) == {RunStatus.SLEEPING}

    # Deploy v3 and wake the old runs: each finishes on the path it started on.
    first.stop()
    e2e_env["env"]["DURABLE_TEST_DEPLOY"] = "v3"
    workers("v3")
    now = timezone.now()  # fast-forward the hour: the sleep step's stored wake time and the run's
    Step.objects.filter(run_id__in=ids, step_id="cool-off").update(output=serialization.dumps({"wake_at": now}, "t"))
    Run.objects.filter(id__in=ids).update(wake_at=now)
    new = deploy_tasks.order.apply_async((50, 0.1), queue=queue)
    assert [run.get(timeout=120) for run in runs] == list(range(50))
    assert new.get(timeout=60) == 50
    assert BodyRun.objects.filter(run_id=ids[0], step="audit").count() == 1
    assert not BodyRun.objects.filter(run_id=ids[0], step="audit-v2").exists()
    assert BodyRun.objects.filter(run_id=new.id, step="audit-v2").count() == 1
    assert Step.objects.get(run_id=new.id, step_id="#patch:audit-v2").kind == "patch"


def test_step_timeout__interrupts_a_stalled_step_on_a_worker_and_retries_it(e2e_env, workers):
    workers("prefork")  # the pool process runs the task in its main thread: SIGALRM reaches it
    run = deploy_tasks.slow_then_fast.apply_async(kwargs={"timeout": 1.0, "seconds": 300}, queue=e2e_env["queue"])
    assert run.get(timeout=90) == 2  # the 300 s sleep was cut, the retry returned at once
    assert Step.objects.get(run_id=run.id, step_id="slow").attempts == 2
    assert BodyRun.objects.filter(run_id=run.id, step="slow").count() == 2


def test_wait_for_any__finds_the_event_sent_before_the_wait(e2e_env, workers):
    workers("events")
    run = deploy_tasks.payment.apply_async((21, True), queue=e2e_env["queue"])
    wait_for(lambda: BodyRun.objects.filter(run_id=run.id, step="prepare").exists(), 60, "the first step")
    send_event("payment.failed", {"order_id": 21, "why": "declined"})  # before the run reaches its wait
    BodyRun.objects.create(run_id="test", step="go-21")
    assert run.get(timeout=60) == ["payment.failed", {"order_id": 21, "why": "declined"}]
    assert get_run(run.id).executions == 1  # it never had to wait
