"""``priority=`` orders the broker queue too: a crowded queue is drained highest level first."""

import pytest

from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp.models import Interval
from tests.testapp.priority_tasks import prioritized

pytestmark = pytest.mark.e2e


def test_a_crowded_queue__is_drained_in_priority_order(e2e_env, workers):
    queue = e2e_env["queue"]
    # Published while no worker consumes: lowest first, so arrival order is the reverse of
    # the order the priorities ask for.
    sent = [(-600, n) for n in range(4)] + [(0, n) for n in range(4, 12)] + [(600, 12)]
    ids = {prioritized.apply_async(("b", n, p), queue=queue).id: p for p, n in sent}
    # One process fetching one message at a time (prefetch 1, acks_late): the broker decides.
    workers("solo", pool="solo", concurrency=1)
    wait_for(
        lambda: Run.objects.filter(id__in=ids, status=RunStatus.COMPLETED).count() == len(ids),
        120,
        "every run to complete",
    )
    started = Interval.objects.filter(key="b").order_by("started", "id").values_list("run_id", flat=True)
    order = [ids[run_id] for run_id in dict.fromkeys(started)]  # first start of each run
    assert len(order) == len(ids)
    assert order[0] == 600
    assert order == sorted(order, reverse=True), order


def test_a_resumed_run__goes_ahead_of_a_backlog_of_first_executions(e2e_env, workers):
    """Issue 14: a run whose wait came due is fetched before runs that have not started."""
    from celery_durable import send_event
    from tests.testapp.priority_tasks import resumable

    queue = e2e_env["queue"]
    waiting = resumable.apply_async(("lane",), queue=queue)
    first = workers("first", pool="solo", concurrency=1)
    wait_for(lambda: Run.objects.get(id=waiting.id).status == RunStatus.WAITING, 60, "the run to wait")
    first.stop()
    backlog = [prioritized.apply_async(("lane", n), queue=queue).id for n in range(8)]
    send_event("e2e.resume", {})  # published after the backlog, in the resume lane
    assert Run.objects.get(id=waiting.id).status == RunStatus.QUEUED
    workers("second", pool="solo", concurrency=1)
    ids = [waiting.id, *backlog]
    wait_for(
        lambda: Run.objects.filter(id__in=ids, status=RunStatus.COMPLETED).count() == len(ids),
        120,
        "every run to complete",
    )
    started = Interval.objects.filter(key="lane").order_by("started", "id").values_list("run_id", flat=True)
    order = list(dict.fromkeys(started))
    assert sorted(order) == sorted(ids)
    assert order[0] == waiting.id, order
