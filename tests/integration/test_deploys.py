"""Issue 16, items 1-2: the deploy check (replay against the code deployed now) and step.patched."""

import io
import json

import pytest
from celery import current_app
from django.core.management import call_command

from celery_durable import durable_task, step
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.integration.conftest import execute
from tests.testapp import deploy_tasks
from tests.testapp.models import BodyRun
from tests.testapp.tasks import counted


@pytest.fixture
def redeploy():
    """Re-register a task name with another body: "the code as deployed now" in this process."""
    saved = {}

    def define(name, fn, **options):
        if name not in saved:
            saved[name] = current_app.tasks.get(name)
        current_app.tasks.pop(name, None)
        return durable_task(name=name, **options)(fn)

    yield define
    for name, task in saved.items():
        current_app.tasks.pop(name, None)
        if task is not None:
            current_app.tasks[name] = task


def snapshot():
    """Everything a check must not change."""
    runs = sorted(Run.objects.values_list("id", "status", "generation", "executions", "wake_at", "lease_owner"))
    steps = sorted(Step.objects.values_list("run_id", "step_id", "status", "output", "attempts"))
    return runs, steps, BodyRun.objects.count()


def sleeping_orders(durable, numbers):
    runs = [deploy_tasks.order.delay(n) for n in numbers]
    durable.run_until_idle(advance_clock=False)
    assert {Run.objects.get(id=r.id).status for r in runs} == {RunStatus.SLEEPING}
    return runs


def check_command(*args):
    out = io.StringIO()
    try:
        call_command("durable_check_deploy", *args, stdout=out)
    except SystemExit as exit_:
        return exit_.code, out.getvalue()
    return 0, out.getvalue()


# --- versions of dp.order as a later deploy might change it -------------------------------------


def renamed_audit(n, nap=3600):
    step.run("reserve", counted, "reserve", n)
    if n % 50 == 0:
        step.run("audit-v2", counted, "audit-v2", n)
    step.sleep("cool-off", nap)
    return step.run("ship", counted, "ship", n)


def patched_audit(n, nap=3600):
    step.run("reserve", counted, "reserve", n)
    if n % 50 == 0:
        if step.patched("audit-v2"):
            step.run("audit-v2", counted, "audit-v2", n)
        else:
            step.run("audit", counted, "audit", n)
    step.sleep("cool-off", nap)
    return step.run("ship", counted, "ship", n)


def audit_became_a_sleep(n, nap=3600):
    step.run("reserve", counted, "reserve", n)
    if n % 50 == 0:
        step.sleep("audit", 1)
    step.sleep("cool-off", nap)
    return step.run("ship", counted, "ship", n)


def reads_a_field_that_is_gone(n, nap=3600):
    reserved = step.run("reserve", counted, "reserve", n)
    reserved["id"]  # the step's stored output is an int: this raises on replay
    step.sleep("cool-off", nap)
    return step.run("ship", counted, "ship", n)


def writes_outside_steps(n, nap=3600):
    step.run("reserve", counted, "reserve", n)
    BodyRun.objects.create(run_id="outside", step="side-effect")  # not allowed, but undone by a check
    if n % 50 == 0:
        step.run("audit", counted, "audit", n)
    step.sleep("cool-off", nap)
    return step.run("ship", counted, "ship", n)


def test_same_code__every_sleeping_run_replays(durable):
    sleeping_orders(durable, range(3))
    before = snapshot()
    report = durable.check_deploy()
    assert (report.ok, report.checked, report.failures) == (True, 3, [])
    assert snapshot() == before
    assert check_command() == (0, "ok: all 3 unfinished run(s) replay on this code\n")


def test_renamed_step__finds_the_one_broken_run_and_writes_nothing(durable, redeploy):
    runs = sleeping_orders(durable, range(5))  # only n=0 went through the audit
    before = snapshot()
    redeploy("dp.order", renamed_audit)
    report = durable.check_deploy()
    assert report.checked == 5
    assert [(v.run_id, v.cause, v.step_id) for v in report.failures] == [(runs[0].id, "step-not-reached", "audit")]
    assert "new step 'audit-v2'" in report.failures[0].detail
    assert snapshot() == before  # no body ran (BodyRun), no row changed
    code, out = check_command("--json")
    assert code == 1
    data = json.loads(out)
    assert (data["ok"], data["checked"], data["failed"]) == (False, 5, 1)
    assert [(g["task_name"], g["cause"], [r["run_id"] for r in g["runs"]]) for g in data["groups"]] == [
        ("dp.order", "step-not-reached", [runs[0].id])
    ]
    code, text = check_command()
    assert code == 1 and "1 of 5 unfinished run(s) would fail" in text and runs[0].id in text
    assert snapshot() == before


def test_patched__old_runs_keep_the_old_path_new_runs_take_the_new_one(durable, redeploy):
    old = sleeping_orders(durable, [0, 1])
    redeploy("dp.order", patched_audit)
    assert durable.check_deploy().ok
    new = deploy_tasks.order.delay(50)
    durable.run_until_idle()  # wakes everyone on the fake clock
    assert [durable.result(r.id) for r in (*old, new)] == [0, 1, 50]
    assert [s for s, _, _ in durable.history(old[0].id)] == ["reserve", "audit", "cool-off", "ship"]
    assert [s for s, _, _ in durable.history(new.id)] == ["reserve", "#patch:audit-v2", "audit-v2", "cool-off", "ship"]
    assert Step.objects.get(run_id=new.id, step_id="#patch:audit-v2").kind == "patch"
    assert not BodyRun.objects.filter(run_id=old[0].id, step="audit-v2").exists()
    assert BodyRun.objects.filter(run_id=old[0].id, step="audit").count() == 1


def test_patched__a_new_run_that_recorded_the_marker_replays_with_it(durable, redeploy):
    redeploy("dp.order", patched_audit)
    run = deploy_tasks.order.delay(0)
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.get(id=run.id).status == RunStatus.SLEEPING
    verdict = durable.check_replay(run.id)
    assert (verdict.ok, verdict.stopped_at, verdict.replayed) == (True, "cool-off", 3)  # markers are not counted
    # Old runs drained: the patch call is removed, the new path kept. A recorded marker
    # that is no longer asked for is ignored, by the check and by the execution.
    redeploy("dp.order", renamed_audit)
    assert durable.check_replay(run.id).ok
    durable.run_until_idle()
    assert durable.result(run.id) == 0
    assert BodyRun.objects.filter(run_id=run.id, step="audit-v2").count() == 1


def test_patched__a_marker_no_longer_asked_for_does_not_make_a_new_patch_false(durable, redeploy):
    def first_patch(n, nap=3600):
        if step.patched("a"):
            step.run("new-a", counted, "new-a", n)
        step.sleep("cool-off", nap)
        return step.run("ship", counted, "ship", n)

    redeploy("dp.order", first_patch)
    run = deploy_tasks.order.delay(1)
    durable.run_until_idle(advance_clock=False)

    def second_patch(n, nap=3600):  # patch "a" cleaned up; a later change "b" after the sleep
        step.run("new-a", counted, "new-a", n)
        step.sleep("cool-off", nap)
        if step.patched("b"):
            return step.run("ship-b", counted, "ship-b", n)
        return step.run("ship", counted, "ship", n)

    redeploy("dp.order", second_patch)
    assert durable.check_replay(run.id).ok
    durable.run_until_idle()
    assert [s for s, _, _ in durable.history(run.id)] == ["#patch:a", "new-a", "cool-off", "#patch:b", "ship-b"]


def test_step_kind_changed__is_a_nondeterminism_failure(durable, redeploy):
    runs = sleeping_orders(durable, [0, 1])
    redeploy("dp.order", audit_became_a_sleep)
    report = durable.check_deploy()
    assert [(v.run_id, v.cause, v.step_id) for v in report.failures] == [(runs[0].id, "nondeterminism", "audit")]
    assert "recorded as run" in report.failures[0].detail


def test_code_outside_steps_raising__is_an_error_and_removed_task_is_reported(durable, redeploy):
    runs = sleeping_orders(durable, [1])
    redeploy("dp.order", reads_a_field_that_is_gone)
    verdict = durable.check_replay(runs[0].id)
    assert (verdict.ok, verdict.cause) == (False, "error")
    assert "TypeError" in verdict.detail
    current_app.tasks.pop("dp.order")
    verdict = durable.check_replay(runs[0].id)
    assert (verdict.ok, verdict.cause) == (False, "task-removed")
    code, text = check_command()
    assert code == 1 and "dp.order: task-removed, 1 run(s)" in text


def test_writes_outside_steps_during_a_check__are_rolled_back(durable, redeploy):
    sleeping_orders(durable, [0, 1])
    before = snapshot()
    redeploy("dp.order", writes_outside_steps)
    assert durable.check_deploy().ok
    assert snapshot() == before
    assert not BodyRun.objects.filter(run_id="outside").exists()


def test_removed_trailing_step__the_body_returns_before_a_recorded_step(durable, redeploy):
    runs = sleeping_orders(durable, [1])

    def no_cool_off(n, nap=3600):
        step.run("reserve", counted, "reserve", n)
        return n

    redeploy("dp.order", no_cool_off)
    verdict = durable.check_replay(runs[0].id)
    assert (verdict.cause, verdict.step_id) == ("step-not-reached", "cool-off")
    assert "the body returns before it" in verdict.detail


def test_reordered_steps__are_a_failure_even_if_each_is_reached(durable, redeploy):
    @durable_task(name="dp.two")
    def two():
        step.run("a", counted, "a")
        step.run("b", counted, "b")
        step.sleep("nap", 60)

    try:
        run = two.delay()
        durable.run_until_idle(advance_clock=False)

        def swapped():
            step.run("b", counted, "b")
            step.run("a", counted, "a")
            step.sleep("nap", 60)

        redeploy("dp.two", swapped)
        verdict = durable.check_replay(run.id)
        assert (verdict.cause, verdict.step_id) == ("step-not-reached", "a")
        assert "before recorded step 'b'" in verdict.detail
    finally:
        current_app.tasks.pop("dp.two", None)


def test_retrying_and_waiting_runs__are_checked_up_to_their_pending_step(durable):
    failing = deploy_tasks.slow_then_fast.delay(timeout=0.05, seconds=5)  # first attempt times out: retrying
    waiting = deploy_tasks.payment.delay(7)
    execute(failing.id)  # one execution each (run_next would pick the retry again: it is due at once)
    execute(waiting.id)
    assert Run.objects.get(id=failing.id).status == RunStatus.QUEUED
    assert Run.objects.get(id=waiting.id).status == RunStatus.WAITING
    report = durable.check_deploy()
    assert (report.ok, report.checked) == (True, 2)
    assert durable.check_replay(failing.id).stopped_at == "slow"
    assert durable.check_replay(waiting.id).stopped_at == "outcome"


def test_patched__validates_its_id_and_is_refused_inside_a_step(durable):
    from celery_durable import DurableError

    @durable_task(name="dp.bad_patch", retries=0)
    def bad_patch(change_id):
        return step.patched(change_id)

    @durable_task(name="dp.nested_patch", retries=0)
    def nested_patch():
        return step.run("outer", lambda: step.patched("x"))

    try:
        runs = [bad_patch.delay(""), bad_patch.delay("a#b"), nested_patch.delay()]
        durable.run_until_idle()
        for run in runs:
            record = Run.objects.get(id=run.id)
            assert record.status == RunStatus.FAILED
            assert record.error_value["type"] in ("StepIdError", "StepNestingError")
        assert not Step.objects.filter(kind="patch").exists()
        assert issubclass(__import__("celery_durable").exceptions.StepIdError, DurableError)
    finally:
        current_app.tasks.pop("dp.bad_patch", None)
        current_app.tasks.pop("dp.nested_patch", None)
