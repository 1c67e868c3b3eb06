"""A real worker's log says what happened to a suspended run, not only Celery's ``Task ... ignored``."""

import pytest

from celery_durable import get_run
from celery_durable.models import Step
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_worker_log__says_the_run_sleeps_until_when(e2e_env, workers):
    worker = workers("solo", pool="solo")
    run = flows.sleep_then_steps.apply_async((2,), queue=e2e_env["queue"])
    assert run.get(timeout=60) == run.id
    assert get_run(run.id).status == RunStatus.COMPLETED
    wake_at = Step.objects.get(run_id=run.id, step_id="nap").output_value["wake_at"]
    log = wait_for(lambda: worker.log.read_text(), 10, "the worker log")
    lines = [line for line in log.splitlines() if run.id in line]
    sleeping = [i for i, line in enumerate(lines) if "sleeping until" in line]
    assert len(sleeping) == 1, lines
    assert f"sleeping until {wake_at:%Y-%m-%d %H:%M:%S}" in lines[sleeping[0]]
    assert "(step 'nap')" in lines[sleeping[0]]
    assert " ignored" in lines[sleeping[0] + 1]  # then Celery's own line for the ended task
