"""OBSERVE_PLAIN_TASKS with a real worker: a project's plain tasks appear as runs, unchanged."""

import pytest
from celery import chain

from celery_durable.models import Run, Step
from tests.e2e.conftest import wait_for
from tests.testapp import observe_tasks

pytestmark = pytest.mark.e2e


def test_plain_tasks_on_a_worker__are_recorded_as_one_step_runs(e2e_env, workers):
    e2e_env["env"]["DURABLE_TEST_OBSERVE"] = "obs.*"
    # One pool process: Celery publishes a retry (here countdown=0) before it stores the RETRY
    # state, so on a second process the retry can succeed first and RETRY overwrite its SUCCESS
    # in the result backend; Celery's own race, and the test would wait for a result forever.
    workers("observer", concurrency=1)
    queue = e2e_env["queue"]
    ok = observe_tasks.double.apply_async((5,), queue=queue)
    bad = observe_tasks.broken.apply_async(("declined",), queue=queue)
    retried = observe_tasks.flaky.apply_async((1,), queue=queue)
    pipeline = chain(observe_tasks.double.s(1), observe_tasks.double.s()).apply_async(queue=queue)
    # The tasks behave as they always did: results through the result backend.
    assert ok.get(timeout=60) == 10
    assert retried.get(timeout=60) == 1
    assert pipeline.get(timeout=60) == 4
    with pytest.raises(ValueError, match="declined"):
        bad.get(timeout=60, propagate=True)
    finished = ("completed", "failed")
    wait_for(lambda: Run.objects.filter(status__in=finished).count() == 5, 30, "five recorded runs")
    runs = {run.id: run for run in Run.objects.all()}
    assert (runs[ok.id].status, runs[ok.id].result_value) == ("completed", 10)
    assert runs[bad.id].status == "failed"
    assert (runs[retried.id].status, runs[retried.id].executions) == ("completed", 2)
    assert (runs[pipeline.id].status, runs[pipeline.id].result_value) == ("completed", 4)
    assert runs[pipeline.parent.id].result_value == 2
    assert not any(run.durable for run in runs.values())
    assert Step.objects.filter(step_id="run").count() == 5
