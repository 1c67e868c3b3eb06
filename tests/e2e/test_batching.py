"""Batching (``Batch``) with real workers on Redis and RabbitMQ: by size, by time, and a worker killed meanwhile."""

import pytest

from celery_durable import batch_run
from celery_durable.models import BatchItem, Run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import batch_tasks
from tests.testapp.models import BodyRun

pytestmark = pytest.mark.e2e


def item_counts(prefix):
    counts = {}
    for name in BodyRun.objects.filter(step__startswith=prefix).values_list("step", flat=True):
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_size__the_filling_call_starts_the_batch(e2e_env, workers):
    workers("size")
    queue = e2e_env["queue"]
    calls = [batch_tasks.collect.apply_async(kwargs={"account": "acme", "n": n}, queue=queue) for n in (1, 2, 3)]
    assert [call.get(timeout=60) for call in calls] == [6, 6, 6]
    run = batch_run(calls[0].id)
    assert run.status == RunStatus.COMPLETED
    assert set(BatchItem.objects.filter(run=run).values_list("id", flat=True)) == {call.id for call in calls}
    assert item_counts("item:") == {"item:1": 1, "item:2": 1, "item:3": 1}


def test_time__the_workers_services_form_the_batch(e2e_env, workers):
    workers("time")
    calls = [batch_tasks.slow.apply_async(kwargs={"n": n}, queue=e2e_env["queue"]) for n in range(5)]
    assert [call.get(timeout=60) for call in calls] == [5] * 5
    assert Run.objects.filter(task_name="b.slow").count() == 1
    assert item_counts("slow:") == {f"slow:{n}": 1 for n in range(5)}


def test_worker_killed_while_the_batch_forms__no_call_lost_or_run_twice(e2e_env, workers):
    first = workers("first")
    queue = e2e_env["queue"]
    calls = [batch_tasks.slow.apply_async(kwargs={"n": n}, queue=queue) for n in range(3)]
    assert batch_run(calls[0].id) is None  # the batch still forms...
    first.kill()  # ...when the worker dies (SIGKILL: its services thread with it)
    calls += [batch_tasks.slow.apply_async(kwargs={"n": n}, queue=queue) for n in range(3, 6)]
    workers("second")
    assert [call.get(timeout=60) for call in calls] == [6] * 6
    wait_for(lambda: not BatchItem.objects.filter(task_name="b.slow", run__isnull=True).exists(), 30, "every call")
    runs = Run.objects.filter(task_name="b.slow")
    assert runs.count() == 1 and runs.get().status == RunStatus.COMPLETED
    assert item_counts("slow:") == {f"slow:{n}": 1 for n in range(6)}
