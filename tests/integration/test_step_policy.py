"""Issue 16, item 3: a step's own retry policy and timeout (StepTimeout inside the step)."""

import pytest
from celery import current_app

from celery_durable import DurableConfigError, RetryPolicy, durable_task, step
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from tests.testapp import deploy_tasks
from tests.testapp.models import BodyRun
from tests.testapp.tasks import counted

NO_WAIT = {"retry_backoff": False, "default_retry_delay": 0}


@pytest.fixture
def define():
    names = []

    def declare(name, fn, **options):
        names.append(name)
        return durable_task(name=name, **options)(fn)

    yield declare
    for name in names:
        current_app.tasks.pop(name, None)


def failing_times(name, times):
    """A step body that raises the first ``times`` attempts."""
    done = BodyRun.objects.filter(run_id=step.run_id, step=name).count()
    counted(name)
    if done < times:
        raise ValueError(f"failure {done + 1}")
    return done + 1


def test_step_retry_policy__overrides_the_tasks_for_that_step_only(durable, define):
    def body():
        own = step.run("own", failing_times, "own", 2, retry=RetryPolicy(retries=2, **NO_WAIT))
        return [own, step.run("task-policy", failing_times, "task-policy", 1)]

    task = define("sp.override", body, retries=0)  # the task retries nothing
    run = task.delay()
    durable.run_until_idle()
    record = Run.objects.get(id=run.id)
    assert record.status == RunStatus.FAILED  # "task-policy" had the task's policy: no retry
    assert record.error_value["message"] == "failure 1"
    assert durable.history(run.id) == [("own", "completed", 3), ("task-policy", "failed", 1)]


def test_step_retry_policy__can_retry_less_than_the_task(durable, define):
    def body():
        return step.run("once", failing_times, "once", 1, retry=RetryPolicy(retries=0))

    run = define("sp.less", body, retries=5, **NO_WAIT).delay()
    durable.run_until_idle()
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED
    assert BodyRun.objects.filter(run_id=run.id, step="once").count() == 1


def test_step_timeout__raises_inside_the_step_and_is_retried_by_its_policy(durable):
    run = deploy_tasks.slow_then_fast.delay(timeout=0.2, seconds=60)  # the alarm cuts the 60 s sleep
    durable.run_next()
    step_row = Step.objects.get(run_id=run.id, step_id="slow")
    assert (step_row.status, step_row.attempts) == ("failed", 1)
    assert '"StepTimeout"' in step_row.error and "exceeded its timeout of 0.2s" in step_row.error
    durable.run_until_idle()
    assert durable.result(run.id) == 2
    assert durable.history(run.id) == [("slow", "completed", 2)]


def test_step_timeout__fails_the_run_once_its_retries_are_spent(durable, define):
    def body():
        return step.run("slow", deploy_tasks.held, "slow", 60, timeout=0.1)

    run = define("sp.always_slow", body, retries=0).delay()
    durable.run_until_idle()
    record = Run.objects.get(id=run.id)
    assert record.status == RunStatus.FAILED
    assert record.error_value["type"] == "StepTimeout"
    assert BodyRun.objects.filter(run_id=run.id, step="slow").count() == 1


def test_step_timeout__a_body_that_swallows_it_still_times_out(durable, define):
    import time

    def swallowing():
        counted("swallow")
        try:
            time.sleep(60)
        except Exception:
            return "swallowed"  # caught StepTimeout; the output must not be kept
        return "slept"

    def body():
        return step.run("swallow", swallowing, timeout=0.1)

    run = define("sp.swallow", body, retries=0).delay()
    durable.run_until_idle()
    record = Run.objects.get(id=run.id)
    assert (record.status, record.error_value["type"]) == (RunStatus.FAILED, "StepTimeout")


def test_atomic_step_timeout__rolls_back_its_writes(durable, define):
    from tests.testapp.models import Ledger

    def write_then_stall():
        import time

        Ledger.objects.create(run_id=step.run_id, amount=5)
        time.sleep(60)

    def body():
        return step.run("pay", write_then_stall, atomic=True, timeout=0.1)

    run = define("sp.atomic", body, retries=0).delay()
    durable.run_until_idle()
    assert Run.objects.get(id=run.id).error_value["type"] == "StepTimeout"
    assert not Ledger.objects.filter(run_id=run.id).exists()


def test_other_keyword_arguments__still_reach_the_step_body(durable, define):
    def body():
        return step.run("kw", lambda a, b=0, retries=None: [a, b, retries], 1, b=2, retries="mine")

    run = define("sp.kwargs", body).delay()
    durable.run_until_idle()
    assert durable.result(run.id) == [1, 2, "mine"]


@pytest.mark.parametrize(
    "options",
    [{"retry": 3}, {"retry": {"retries": 1}}, {"timeout": 0}, {"timeout": -1}, {"timeout": "5"}],
)
def test_bad_step_policy__is_a_config_error_and_runs_nothing(durable, define, options):
    def body():
        return step.run("x", counted, "x", **options)

    run = define("sp.bad", body, retries=3).delay()
    durable.run_until_idle()
    record = Run.objects.get(id=run.id)
    assert (record.status, record.error_value["type"]) == (RunStatus.FAILED, "DurableConfigError")
    assert not BodyRun.objects.filter(run_id=run.id).exists()
    assert not Step.objects.filter(run_id=run.id).exists()
    assert issubclass(DurableConfigError, Exception)
