"""Per-key concurrency with real workers on Redis and RabbitMQ, with a worker killed midway."""

import random

import pytest
from django.utils import timezone

from celery_durable.models import Run, RunStatus, Slot
from tests.e2e.conftest import wait_for
from tests.testapp import flows
from tests.testapp.models import Interval

pytestmark = pytest.mark.e2e

LIMIT = 2


def max_overlap(intervals, killed_at):
    """The most intervals of one key open at the same instant (open ones end at the kill)."""
    events = []
    for interval in intervals:
        events.append((interval.started, 1))
        events.append((interval.ended or killed_at, -1))
    current = peak = 0
    for _moment, delta in sorted(events, key=lambda e: (e[0], e[1])):
        current += delta
        peak = max(peak, current)
    return peak


def test_limit_per_key__holds_across_workers_and_a_kill(e2e_env, workers):
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(6)]
    first = workers("first", concurrency=4)
    workers("second", concurrency=4)
    results = [flows.limited_work.apply_async((rng.choice(keys), n), queue=e2e_env["queue"]) for n in range(60)]
    wait_for(lambda: Interval.objects.count() >= 12, 60, "work to be under way")
    killed_at = timezone.now()
    first.kill()
    workers("third", concurrency=4)
    # Every run completes (from the database: a worker killed between a run's completion and
    # its result-backend write leaves .get() waiting for the broker's redelivery on Redis).
    wait_for(
        lambda: Run.objects.filter(task_name="f.limited_work", status=RunStatus.COMPLETED).count() == 60,
        180,
        "every run to complete",
    )
    values = Run.objects.filter(id__in=[r.id for r in results]).values_list("result", flat=True)
    assert sorted(int(v) for v in values) == list(range(60))
    for key in keys:
        intervals = list(Interval.objects.filter(key=key))
        assert max_overlap(intervals, killed_at) <= LIMIT, key
    assert Run.objects.filter(task_name="f.limited_work").exclude(status=RunStatus.COMPLETED).count() == 0
    assert set(Slot.objects.filter(key__startswith="f.limited_work:").values_list("in_use", flat=True)) == {0}


def test_priority_600__starts_next_behind_a_backlog_of_the_same_key(e2e_env, workers):
    queue = e2e_env["queue"]
    backlog = [flows.limited_work.apply_async(("hot", n), queue=queue) for n in range(20)]
    urgent = flows.limited_work.apply_async(("hot", 99, True), queue=queue)
    other = flows.limited_work.apply_async(("cold", 100), queue=queue)
    workers("prio", concurrency=4)
    assert urgent.get(timeout=120) == 99
    assert other.get(timeout=120) == 100
    for result in backlog:
        result.get(timeout=180)
    order = list(Interval.objects.filter(key="hot").order_by("started").values_list("run_id", flat=True))
    # The two admitted at once run first; the urgent run takes the next free slot.
    assert urgent.id in order[:3]
    cold = Interval.objects.get(key="cold")
    assert cold.started < Interval.objects.filter(key="hot").order_by("-started").first().started  # not held up
