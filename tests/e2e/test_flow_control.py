"""Throttle, rate limit, debounce, idempotency and singleton against real workers (issue 4).

Each test runs one ``celery worker`` (prefork, 2 processes) on Redis and on RabbitMQ; calls
that must race each other come from several threads of the test process at once.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection

from celery_durable import RunCancelled, RunSkipped, clock, get_run
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows
from tests.testapp.models import BodyRun, Interval

pytestmark = pytest.mark.e2e


def call_at_once(count, call):
    """``call(i)`` from ``count`` threads released together; their results in order."""
    barrier = threading.Barrier(count)

    def one(i):
        try:
            barrier.wait(timeout=30)
            return call(i)
        finally:
            connection.close()  # each thread has its own connection to the test database

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def status_becomes(run_id, status, timeout=60):
    wait_for(lambda: get_run(run_id).status == status, timeout, f"run {run_id} to be {status}")


def test_throttle__no_run_starts_before_its_gcra_slot(e2e_env, workers):
    """``Throttle(limit=2, period=1, key="team")``: one start per 0.5 s per team, FIFO, none dropped."""
    queue = e2e_env["queue"]
    interval = timedelta(seconds=0.5)
    workers("throttle")
    before = clock.now()  # the caller's clock; the database runs on the same host
    red = [flows.throttled_fast.apply_async(("red", n), queue=queue) for n in range(6)]
    blue = flows.throttled_fast.apply_async(("blue", 100), queue=queue)
    assert [r.get(timeout=60) for r in red] == list(range(6))
    assert blue.get(timeout=60) == 100
    starts = {row.run_id: row.started for row in Interval.objects.filter(key="red")}
    assert len(starts) == 6 == Interval.objects.filter(key="red").count()  # one execution each
    # GCRA with burst 1 gives the k-th call of a key a slot at least k emission intervals
    # after the first call, however fast or slow the caller was; a run starts no earlier than
    # its slot (start times from the database clock).
    for k, result in enumerate(red):
        assert starts[result.id] >= before + k * interval, k
    # Another key is not delayed behind red's schedule.
    assert Interval.objects.get(key="blue").started < starts[red[-1].id]


def test_rate_limit__calls_beyond_the_limit_are_skipped(e2e_env, workers):
    """``RateLimit(limit=2, period=3600, key="user_id")``: 8 callers race, 2 get in."""
    queue = e2e_env["queue"]
    workers("ratelimit")
    results = call_at_once(8, lambda i: flows.rate_limited.apply_async(("u1",), queue=queue))
    other = flows.rate_limited.apply_async(("u2",), queue=queue)
    statuses = {r.id: get_run(r.id).status for r in results}
    admitted = [r for r in results if statuses[r.id] != RunStatus.SKIPPED]
    skipped = [r for r in results if statuses[r.id] == RunStatus.SKIPPED]
    assert len(admitted) == 2 and len(skipped) == 6
    for result in admitted:
        assert result.get(timeout=60) == "u1"
    for result in skipped:
        with pytest.raises(RunSkipped, match="rate limit"):
            result.get(timeout=60)
    assert other.get(timeout=60) == "u2"  # the limit is per key
    assert Run.objects.filter(task_name="f.rate_limited", status=RunStatus.COMPLETED).count() == 3
    assert not Run.objects.filter(status=RunStatus.SKIPPED, started_at__isnull=False).exists()  # never executed


def test_debounce__a_burst_is_one_execution_with_the_last_arguments(e2e_env, workers):
    """``Debounce(period=1.5, key="account", timeout=30)``."""
    queue = e2e_env["queue"]
    workers("debounce")
    results = [flows.debounced_fast.apply_async(("acme", version), queue=queue) for version in range(4)]
    before_last = clock.now()
    results.append(flows.debounced_fast.apply_async(("acme", 4), queue=queue))
    other = flows.debounced_fast.apply_async(("globex", 9), queue=queue)
    assert len({r.id for r in results}) == 1  # every caller got the same run
    assert results[0].get(timeout=60) == 4  # the newest arguments won
    assert other.get(timeout=60) == 9  # another key has its own run
    run = get_run(results[0].id)
    assert run.executions == 1
    assert BodyRun.objects.filter(run_id=run.id, step="reindex").count() == 1
    assert Run.objects.filter(task_name="f.debounced_fast").count() == 2
    assert run.started_at >= before_last + timedelta(seconds=1.5)  # a quiet period after the last call


def test_idempotency_key__the_same_key_twice_is_one_run(e2e_env, workers):
    queue = e2e_env["queue"]
    workers("idempotent")
    results = call_at_once(6, lambda i: flows.idempotent.apply_async((17,), {"note": str(i)}, queue=queue))
    assert len({r.id for r in results}) == 1
    run_id = results[0].id
    winner = json.loads(get_run(run_id).kwargs)["note"]  # the first caller's arguments
    assert results[0].get(timeout=60) == f"17{winner}"
    other = flows.idempotent.apply_async((18,), queue=queue)
    assert other.get(timeout=60) == "18"
    again = flows.idempotent.apply_async((17,), {"note": "later"}, queue=queue)  # after it finished
    assert again.id == run_id
    assert again.get(timeout=60) == results[0].get(timeout=60)
    assert Run.objects.filter(task_name="f.idempotent").count() == 2
    assert BodyRun.objects.filter(run_id=run_id, step="charge").count() == 1
    assert get_run(run_id).executions == 1


def test_singleton_skip__a_call_while_a_run_is_unfinished_is_skipped(e2e_env, workers):
    queue = e2e_env["queue"]
    workers("singleton-skip")
    first = flows.singleton_skip_nap.apply_async((1, 3), queue=queue)
    status_becomes(first.id, RunStatus.SLEEPING)  # executed by the worker, unfinished
    second = flows.singleton_skip_nap.apply_async((1, 0.1), queue=queue)
    other = flows.singleton_skip_nap.apply_async((2, 0.1), queue=queue)
    with pytest.raises(RunSkipped, match="singleton"):
        second.get(timeout=60)
    assert get_run(second.id).status == RunStatus.SKIPPED
    assert other.get(timeout=60) == [2, 0.1]  # the singleton is per key
    assert first.get(timeout=60) == [1, 3]
    third = flows.singleton_skip_nap.apply_async((1, 0.1), queue=queue)  # the key is free again
    assert third.get(timeout=60) == [1, 0.1]


def test_singleton_cancel__a_new_call_cancels_the_unfinished_run(e2e_env, workers):
    queue = e2e_env["queue"]
    workers("singleton-cancel")
    old = flows.singleton_cancel_nap.apply_async((1, 3600), queue=queue)
    status_becomes(old.id, RunStatus.SLEEPING)
    new = flows.singleton_cancel_nap.apply_async((1, 0.1), queue=queue)
    assert get_run(old.id).status == RunStatus.CANCELLED  # a sleeping run is cancelled at once
    assert new.get(timeout=60) == [1, 0.1]
    with pytest.raises(RunCancelled):
        old.get(timeout=60)
    assert "Singleton" in get_run(old.id).cancel_reason
    assert get_run(old.id).executions == 1
