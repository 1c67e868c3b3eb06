"""Per-key concurrency and priority with real workers on Redis and RabbitMQ (issue 4's e2e).

Two ``celery worker`` processes with four prefork pool processes each run 200 runs over 10
keys while the test SIGKILLs pool processes and whole workers in the middle of step bodies.
Every execution attempt of a body records its interval (database clock) in ``Interval``.
"""

import os
import random
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from tests.e2e.conftest import wait_for
from tests.testapp import flows
from tests.testapp.models import BodyRun, Interval

pytestmark = pytest.mark.e2e

LIMIT = 2  # Concurrency(limit=2, key="key") of f.limited_work
BUSY = "busy"  # a long backlog: 60 runs
NORMAL = [f"k{i}" for i in range(8)]  # 17 runs each
IDLE = "idle"  # 4 runs, called last
KILLS = ["child", "worker", "child", "child", "worker"]  # in a shuffled order per test
KILL_AT = [20, 50, 80, 110, 140]  # completed runs before each kill event


def attempt_intervals(rows):
    """Per key, each execution attempt as ``(start, end, run_id)``.

    An attempt SIGKILLed inside the body has no end. It is counted as lasting until the next
    attempt of the same run starts. A run takes its slot when it is admitted and keeps it
    (``holds_slots``) until it finishes: the killed attempt leaves it ``running`` under a
    lease nobody renews, the reaper requeues it once the lease expires (or a redelivery
    claims it then), and that next attempt still holds the same slot. So from the kill to the
    next attempt the run occupies a slot of its key while executing nothing (SIGKILL stops
    the body at once): the extended interval over-approximates the real execution by exactly
    the time the slot stayed taken. A slot given away early (at the kill or at the lease
    expiry) would show as one more interval open at once; one given back late is no breach.
    """
    by_run = defaultdict(list)
    for row in rows:
        by_run[row.run_id].append(row)
    per_key = defaultdict(list)
    for run_id, attempts in by_run.items():
        attempts.sort(key=lambda a: (a.started, a.id))
        for attempt, following in zip(attempts, [*attempts[1:], None], strict=True):
            end = attempt.ended
            if end is None:
                assert following is not None, f"run {run_id}: a killed attempt was never retried"
                end = following.started
            per_key[attempt.key].append((attempt.started, end, run_id))
    return per_key


def max_overlap(intervals):
    """The most intervals open at one instant (one that ends as another starts: not both)."""
    events = sorted([(start, 1) for start, _end, _run in intervals] + [(end, -1) for _start, end, _run in intervals])
    current = peak = 0
    for _moment, delta in events:  # at equal instants, ends (-1) sort before starts (+1)
        current += delta
        peak = max(peak, current)
    return peak


def pool_processes(worker) -> set[int]:
    """The live pool processes (children) of a worker, from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == worker.process.pid:
            children.add(int(entry.name))
    return children


class Chaos:
    """SIGKILLs a pool process or a whole worker while a step body runs in it."""

    def __init__(self, rng, start_worker, fleet):
        self.rng = rng
        self.start_worker = start_worker
        self.fleet = fleet
        self.started = len(fleet)
        self.hits: list[int] = []  # Interval ids that a kill left open
        self.killed: set[int] = set()  # pids (a reused pid must not pass for a killed body's)

    def executing(self):
        """``(interval id, pid, worker)`` of bodies executing in a live pool process now."""
        owners = {pid: worker for worker in self.fleet for pid in pool_processes(worker)}
        rows = Interval.objects.filter(ended__isnull=True).values_list("id", "pid")
        return [(row_id, pid, owners[pid]) for row_id, pid in rows if pid in owners and pid not in self.killed]

    def strike(self, kind: str) -> None:
        for _ in range(20):  # a body lasts 50 ms: it may end between the query and the kill
            candidates = wait_for(self.executing, 60, "a step body to be executing", interval=0.01)
            row_id, pid, worker = self.rng.choice(candidates)
            if kind == "child":
                self.killed.add(pid)
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda pid=pid, worker=worker: pid not in pool_processes(worker), 30, "the pool process")
            else:
                self.killed |= pool_processes(worker)
                worker.kill()
                self.fleet[self.fleet.index(worker)] = self.start_worker(f"w{self.started}", concurrency=4)
                self.started += 1
            if Interval.objects.filter(id=row_id, ended__isnull=True).exists():
                self.hits.append(row_id)
                return
            if kind == "worker":
                return  # a worker kill costs a restart: one per event, hit or not


def completed(task_name: str) -> int:
    return Run.objects.filter(task_name=task_name, status=RunStatus.COMPLETED).count()


def test_limits_per_key__hold_with_2x4_workers_200_runs_and_kills(e2e_env, workers):
    queue = e2e_env["queue"]
    rng = random.Random(int(os.environ.get("DURABLE_E2E_SEED", "4")))
    keys = [BUSY] * 60 + rng.sample([key for key in NORMAL for _ in range(17)], 17 * len(NORMAL)) + [IDLE] * 4
    # Every run is called before the workers start: each key admits LIMIT runs (in the broker
    # queue), the rest wait in the database backlog. The idle key's runs are called last.
    results = [flows.limited_work.apply_async((key, n), queue=queue) for n, key in enumerate(keys)]
    assert Run.objects.filter(task_name="f.limited_work", status=RunStatus.PENDING).count() == 200 - 2 * 10
    fleet = [workers("w0", concurrency=4), workers("w1", concurrency=4)]
    chaos = Chaos(rng, workers, fleet)
    for kind, threshold in zip(rng.sample(KILLS, len(KILLS)), KILL_AT, strict=True):
        wait_for(lambda t=threshold: completed("f.limited_work") >= t, 120, f"{threshold} runs to complete")
        chaos.strike(kind)
    # Every run completes (read from the database: a worker killed between a run's
    # completion and its result-backend write leaves .get() waiting for a redelivery).
    wait_for(lambda: completed("f.limited_work") == 200, 240, "every run to complete", interval=0.25)
    values = Run.objects.filter(id__in=[r.id for r in results]).values_list("result", flat=True)
    assert sorted(int(v) for v in values) == list(range(200))
    assert chaos.hits, "no kill landed inside a step body"
    assert Interval.objects.filter(id__in=chaos.hits, ended__isnull=True).count() == len(chaos.hits)

    per_key = attempt_intervals(Interval.objects.all())
    assert set(per_key) == {BUSY, IDLE, *NORMAL}
    for key, intervals in per_key.items():
        assert max_overlap(intervals) <= LIMIT, key
    assert max_overlap(per_key[BUSY]) == LIMIT  # the limit was reached, not just respected

    # A busy key does not hold up others: the idle key's runs, called after all 196 others,
    # start before the busy key's backlog has drained.
    first_start = {}
    for start, _end, run_id in sorted(per_key[BUSY] + per_key[IDLE]):
        first_start.setdefault(run_id, start)
    busy_ids = {r.id for r, key in zip(results, keys, strict=True) if key == BUSY}
    busy_last = max(first_start[run_id] for run_id in busy_ids)
    for result in results[-4:]:
        assert first_start[result.id] < busy_last

    assert not Run.objects.filter(task_name="f.limited_work", holds_slots=True).exists()
    assert set(Slot.objects.filter(key__startswith="f.limited_work:").values_list("in_use", flat=True)) == {0}


def test_priority_600__starts_next_behind_20_runs_of_the_same_key(e2e_env, workers):
    """``f.per_user``: Concurrency(limit=1, key="user_id"), priority 600 for paid users."""
    queue = e2e_env["queue"]
    backlog = [flows.per_user.apply_async((7, "free"), queue=queue) for _ in range(20)]
    urgent = flows.per_user.apply_async((7, "paid"), queue=queue)
    other = flows.per_user.apply_async((8, "free"), queue=queue)
    assert Run.objects.filter(id__in=[r.id for r in backlog[1:]] + [urgent.id], status=RunStatus.PENDING).count() == 20
    workers("p0", concurrency=4)
    workers("p1", concurrency=4)
    assert urgent.get(timeout=120) == 7
    assert other.get(timeout=120) == 8
    for result in backlog:
        assert result.get(timeout=180) == 7
    # Limit 1: the bodies of user 7 ran one at a time, so the order of their rows is the start
    # order. The run admitted at call time ran first; the paid run took the next free slot,
    # ahead of 19 runs called before it; ties keep call order.
    order = list(
        BodyRun.objects.filter(step="work", run_id__in=[r.id for r in [*backlog, urgent]])
        .order_by("id")
        .values_list("run_id", flat=True)
    )
    assert order == [backlog[0].id, urgent.id, *(r.id for r in backlog[1:])]
    # Another key is not held up behind user 7's backlog.
    other_row = BodyRun.objects.get(step="work", run_id=other.id)
    assert BodyRun.objects.filter(step="work", run_id__in=[r.id for r in backlog], id__gt=other_row.id).exists()
