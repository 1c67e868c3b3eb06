"""What install(app) changes in a real worker: heartbeats and database connection reuse."""

import json

import pytest

from celery_durable import get_run
from celery_durable.states import RunStatus
from tests.testapp import tasks
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e


def test_step_longer_than_the_lease__keeps_its_lease_by_heartbeat(e2e_env, workers):
    workers("busy")
    workers("idle")  # would take the run over if its lease expired
    result = tasks.slow_step.apply_async((10.0,), queue=e2e_env["queue"])  # lease: 4 s, heartbeat: 1 s
    assert result.get(timeout=60) == result.id
    assert BodyRun.objects.filter(run_id=result.id, step="slow").count() == 1
    record = get_run(result.id)
    assert record.status == RunStatus.COMPLETED
    assert record.executions == 1
    assert record.recoveries == 0


def test_durable_tasks__reuse_their_database_connection(e2e_env, workers):
    workers("conn", pool="solo")
    pids = [tasks.durable_backend_pid.apply_async(queue=e2e_env["queue"]).get(timeout=30) for _ in range(4)]
    assert len(set(pids)) == 1, pids
    # Celery's own behaviour is unchanged for plain tasks: a new connection per task.
    plain = [tasks.plain_backend_pid.apply_async(queue=e2e_env["queue"]).get(timeout=30) for _ in range(3)]
    assert len(set(plain)) == 3, plain


def test_durable_task_in_a_chain__passes_its_result_on(e2e_env, workers):
    from celery import chain

    workers("canvas")
    flow = chain(tasks.add.s(1, 2), tasks.plain.s(), tasks.add.s(10)).apply_async(queue=e2e_env["queue"])
    assert flow.get(timeout=60) == 16  # (1 + 2) * 2 + 10


def test_run_of_a_task_removed_by_a_deploy__fails_once_with_a_clear_message(e2e_env, workers):
    from datetime import timedelta

    from celery import current_app

    from celery_durable import clock
    from celery_durable.models import Run
    from celery_durable.store import recovery
    from tests.e2e.conftest import wait_for

    # Its message was lost long ago; the worker's sweeper republishes it, the worker lacks the task.
    Run.objects.create(
        id="removed-1",
        task_name="shop.removed_in_deploy",
        status=RunStatus.QUEUED,
        options=json.dumps({"queue": e2e_env["queue"]}),
        created_at=clock.now(),
        published_at=clock.now() - timedelta(minutes=10),
    )
    workers("deployed")
    wait_for(lambda: get_run("removed-1").status == RunStatus.FAILED, 30, "the run to fail")
    record = get_run("removed-1")
    assert "no longer registered" in record.error_value["message"]
    assert recovery.take_unpublished(-1, 10) == []  # failed for good: nothing to republish, no loop
    with pytest.raises(Exception, match=r"shop\.removed_in_deploy"):
        current_app.AsyncResult("removed-1").get(timeout=10)
