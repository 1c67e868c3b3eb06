"""Issue 15 with real workers on Redis and RabbitMQ: fair backlogs, overrides, when_full, shared throttles."""

from datetime import timedelta

import pytest

from celery_durable import RunCancelled, RunSkipped, clock, get_run, set_limit
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows
from tests.testapp.models import Interval

pytestmark = pytest.mark.e2e


def all_finished(task_name, count, timeout=180):
    wait_for(
        lambda: Run.objects.filter(task_name=task_name, status=RunStatus.COMPLETED).count() == count,
        timeout,
        f"{count} runs of {task_name} to complete",
    )


def test_fair_key__a_backlog_of_200_delays_another_tenant_by_one_run_per_turn(e2e_env, workers):
    """``Concurrency(limit=1, fair_key="tenant")``: the backlog is promoted round robin from the database."""
    queue = e2e_env["queue"]
    held = flows.fair_work.apply_async(("acme", -1), queue=queue)
    big = [flows.fair_work.apply_async(("acme", n), queue=queue) for n in range(200)]
    small = [flows.fair_work.apply_async(("zeta", n), queue=queue) for n in range(5)]
    workers("fair", concurrency=4)
    all_finished("f.fair_work", 206)
    starts = list(Interval.objects.order_by("started", "id").values_list("run_id", flat=True))
    assert len(starts) == 206 and starts[0] == held.id  # one execution each; limit 1: start order = promotion order
    promoted = starts[1:]
    assert [promoted.index(r.id) for r in small] == [1, 3, 5, 7, 9]
    assert [r for r in promoted if r in {b.id for b in big}] == [b.id for b in big]  # call order within a tenant
    assert Slot.objects.get(key="f.fair_work:#0:*").in_use == 0


def overlaps(intervals):
    """The most intervals open at once."""
    points = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals], key=lambda p: (p[0], p[1]))
    most = current = 0
    for _at, step in points:
        current += step
        most = max(most, current)
    return most


def test_set_limit__an_override_applied_and_removed_while_runs_wait(e2e_env, workers):
    """Limit 1; an override of 3 admits two waiting runs at once; removing it stops none of them."""
    queue = e2e_env["queue"]
    calls = [flows.override_work.apply_async(("x", n), queue=queue) for n in range(12)]
    assert sorted(get_run(r.id).status for r in calls).count("queued") == 1
    set_limit(flows.override_work, "x", 3)
    assert sorted(get_run(r.id).status for r in calls).count("queued") == 3  # promoted at once, before any worker
    workers("override", concurrency=4)
    wait_for(lambda: Run.objects.filter(task_name="f.override_work", status="completed").count() >= 3, 60, "3 runs")
    set_limit(flows.override_work, "x", None)
    holders = set(Run.objects.filter(task_name="f.override_work", holds_slots=True).values_list("id", flat=True))
    assert [r.get(timeout=120) for r in calls] == list(range(12))
    rows = list(Interval.objects.filter(key="x").values_list("run_id", "started", "ended"))
    assert len(rows) == 12
    assert 2 <= overlaps([(s, e) for _r, s, e in rows]) <= 3  # the override was in force, never exceeded
    # The runs holding slots at the removal finish (lowering stops none of them); the runs
    # that start once they have all ended run one at a time: the declared limit 1 again.
    drained = max(e for r, _s, e in rows if r in holders)
    late = [(s, e) for _r, s, e in rows if s > drained]
    assert holders and late
    assert overlaps(late) == 1
    assert Slot.objects.get(key="f.override_work:k:x").override is None


def test_when_full_skip_and_cancel_oldest(e2e_env, workers):
    queue = e2e_env["queue"]
    first = flows.full_skip.apply_async(("x", 1), queue=queue)
    skipped = flows.full_skip.apply_async(("x", 2), queue=queue)
    oldest = flows.full_cancel_slow.apply_async(("x", 1), queue=queue)
    newer = flows.full_cancel_slow.apply_async(("x", 2), queue=queue)
    workers("full", concurrency=2)
    assert first.get(timeout=60) == 1
    with pytest.raises(RunSkipped, match="when_full='skip'"):
        skipped.get(timeout=60)
    with pytest.raises(RunCancelled, match="cancel_oldest"):
        oldest.get(timeout=60)
    assert newer.get(timeout=60) == 2
    assert get_run(skipped.id).started_at is None and get_run(oldest.id).started_at is None


def test_when_full_cancel_oldest__a_running_run_stops_at_its_boundary(e2e_env, workers):
    queue = e2e_env["queue"]
    workers("full-running", concurrency=2)
    running = flows.full_cancel_slow.apply_async(("r", 1, 3.0), queue=queue)
    wait_for(lambda: Interval.objects.filter(run_id=running.id).exists(), 60, "the first run to execute")
    newer = flows.full_cancel_slow.apply_async(("r", 2), queue=queue)
    assert get_run(newer.id).status == "pending"  # it waits for the slot the cancelled run frees
    with pytest.raises(RunCancelled):
        running.get(timeout=60)
    assert "cancel_oldest" in get_run(running.id).cancel_reason
    assert newer.get(timeout=60) == 2
    first_ended = Interval.objects.get(run_id=running.id).ended
    assert Interval.objects.get(run_id=newer.id).started >= first_ended  # never both at once
    assert not get_run(running.id).steps.filter(step_id="second").exists()  # stopped at the boundary


def test_shared_throttle__spaces_the_runs_of_two_tasks(e2e_env, workers):
    """``Throttle(limit=2, period=1, name="shared-fast")`` on two tasks: one start per 0.5 s between them."""
    queue = e2e_env["queue"]
    workers("shared", concurrency=4)
    before = clock.now()
    calls = [(flows.shared_fast_a if n % 2 else flows.shared_fast_b).apply_async((n,), queue=queue) for n in range(6)]
    assert [r.get(timeout=60) for r in calls] == list(range(6))
    starts = dict(Interval.objects.filter(key="shared-fast").values_list("run_id", "started"))
    assert len(starts) == 6
    for k, result in enumerate(calls):
        assert starts[result.id] >= before + k * timedelta(seconds=0.5), k
