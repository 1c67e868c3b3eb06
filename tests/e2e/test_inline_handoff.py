"""A real worker runs a key's next run in the process that freed the slot, except under a time limit."""

import pytest
from celery import current_app

from celery_durable import get_run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e

HANDED_OFF = "durable run {} (f.per_user): handed off inline"  # the worker log's line for such a run


@pytest.fixture
def default_queue(e2e_env):
    """``.delay()`` from this process goes to the test's queue: runs with no queue of their own."""
    previous = current_app.conf.task_default_queue
    current_app.conf.task_default_queue = e2e_env["queue"]
    yield e2e_env["queue"]
    current_app.conf.task_default_queue = previous


def drain_backlog(worker, user_id):
    backlog = [flows.per_user.delay(user_id) for _ in range(3)]
    for result in backlog:
        assert result.get(timeout=60) == user_id
    assert [r.run_id for r in BodyRun.objects.filter(step="work").order_by("id")] == [r.id for r in backlog]
    assert {get_run(r.id).status for r in backlog} == {RunStatus.COMPLETED}
    log = wait_for(lambda: worker.log.read_text(), 10, "the worker log")
    received = [r.id for r in backlog if f"f.per_user[{r.id}] received" in log]
    handed_off = [r.id for r in backlog if HANDED_OFF.format(r.id) in log]
    return backlog, received, handed_off


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_freed_slot__the_next_runs_execute_in_the_same_process(default_queue, workers):
    worker = workers("inline", pool="prefork", concurrency=1)
    backlog, received, handed_off = drain_backlog(worker, 21)
    assert received == [backlog[0].id]  # the broker delivered the first; the process ran the others
    assert handed_off == [r.id for r in backlog[1:]]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_under_the_worker_soft_time_limit__every_run_is_delivered_by_the_broker(default_queue, workers):
    """Celery times a delivery: inline runs would spend the delivered run's ``--soft-time-limit``."""
    worker = workers("limited", pool="prefork", concurrency=1, options=("--soft-time-limit", "600"))
    backlog, received, handed_off = drain_backlog(worker, 22)
    assert received == [r.id for r in backlog]
    assert handed_off == []
