"""The checker fails loudly, naming the run, on each kind of violation (fabricated rows, no workers)."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from celery_durable import serialization
from celery_durable.models import BatchItem, Event, Run, Step
from celery_durable.states import RunStatus
from tests.testapp.models import ChaosAttempt, ChaosClaim, ChaosCounter, ChaosFault

from . import checker

pytestmark = pytest.mark.chaos

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_run(task="chaos.pipeline", args=(1, 0.2), status=RunStatus.COMPLETED, result=None, **fields) -> Run:
    run_id = str(uuid.uuid4())
    if result is None and status == RunStatus.COMPLETED:
        result = args[1] if task == "chaos.limited" else args[0]
    finished = None if status in (RunStatus.RUNNING, RunStatus.SLEEPING) else at(100)
    return Run.objects.create(
        id=run_id, task_name=task, status=status, args=json.dumps(list(args)),
        result=None if result is None else json.dumps(result), created_at=at(0), finished_at=finished,
        **fields,
    )  # fmt: skip


def body(run, step, *, start, end=None, pid=100, atomic=False, key=None, checkpoint=True, winner=None):
    """Attempt(s) of a step body; the checkpoint names ``winner`` (default: the last attempt)."""
    starts = start if isinstance(start, list) else [start]
    pids = pid if isinstance(pid, list) else [pid] * len(starts)
    ends = end if isinstance(end, list) else [None if end is None else end] * len(starts)
    for n, (s, p, e) in enumerate(zip(starts, pids, ends, strict=True), start=1):
        ChaosAttempt.objects.create(
            run_id=run.id, step=step, n=n, pid=p, atomic=atomic, key=key, started=at(s),
            ended=at(s + 0.1) if e is None else at(e),
        )  # fmt: skip
    ChaosCounter.objects.create(run_id=run.id, step=step, count=len(starts))
    if checkpoint:
        n = winner or len(starts)
        output = serialization.dumps({"n": n, "pid": pids[n - 1]}, "output")
        Step.objects.create(
            run=run, step_id=step, status="completed", output=output, started_at=at(starts[-1]),
            finished_at=at(starts[-1] + 0.2),
        )  # fmt: skip


def claim(run, pid, seconds, execution=1):
    ChaosClaim.objects.create(run_id=run.id, execution=execution, pid=pid, at=at(seconds))


def fault(kind, seconds, pids, until=None):
    ChaosFault.objects.create(
        kind=kind, at=at(seconds), until=None if until is None else at(until), pids=json.dumps(pids)
    )


def sleep_step(run, step, wake, finished):
    output = serialization.dumps({"wake_at": at(wake)}, "sleep")
    Step.objects.create(
        run=run, step_id=step, kind="sleep", status="completed", output=output, started_at=at(0),
        finished_at=at(finished),
    )  # fmt: skip


def pipeline(pid=100) -> Run:
    run = make_run()
    claim(run, pid, 0.5)
    body(run, "a", start=1, pid=pid)
    body(run, "atomic-b", start=2, pid=pid, atomic=True)
    sleep_step(run, "nap", wake=3, finished=3.1)
    body(run, "c", start=4, pid=pid)
    return run


def violations(**kwargs) -> list[str]:
    return checker.check(**kwargs).violations


def test_checker__a_clean_run_passes(db):
    run = pipeline()
    report = checker.check(called=[run.id])
    assert report.violations == [] and (report.runs, report.completed, report.bodies) == (1, 1, 3)


def test_checker__a_plain_body_run_twice_needs_a_fault_hitting_its_process(db):
    run = make_run()
    claim(run, 100, 0.5)
    claim(run, 200, 8, execution=2)
    body(run, "a", start=[1, 9], pid=[100, 200], end=[None, None])
    [message] = violations()
    assert run.id in message and "body ran 2 times" in message
    fault("kill_worker", 5, [300])  # another process: still unexplained
    assert len(violations()) == 1
    fault("kill_child", 1.5, [100])
    report = checker.check()
    assert report.violations == [] and report.duplicated == 1


def test_checker__a_fault_before_the_execution_began_explains_nothing(db):
    run = make_run()
    claim(run, 100, 3)
    claim(run, 200, 8, execution=2)
    body(run, "a", start=[4, 9], pid=[100, 200])
    fault("kill_child", 1, [100])
    assert run.id in violations()[0]


def test_checker__an_atomic_step_committed_twice_is_a_violation_even_under_faults(db):
    run = make_run()
    body(run, "atomic-b", start=[1, 9], pid=[100, 200], atomic=True)
    fault("pg_restart", 0, "*", until=20)
    [message] = violations()
    assert run.id in message and "atomic step 'atomic-b' committed 2 times" in message


def test_checker__an_atomic_write_without_its_checkpoint_is_a_violation(db):
    run = make_run(task="chaos.cancellable", args=(1, 3600), status=RunStatus.CANCELLED, cancel_requested_at=at(50))
    body(run, "s0", start=1, atomic=True, checkpoint=False)
    assert run.id in violations()[0]


def test_checker__runs_lost_or_stuck_are_named(db):
    stuck = make_run(status=RunStatus.RUNNING, lease_expires_at=at(10))
    missing = str(uuid.uuid4())
    report = checker.check(called=[stuck.id, missing])
    assert report.lost == 2
    assert any(missing in v and "lost" in v for v in report.violations)
    assert any(stuck.id in v and "stuck in status 'running'" in v for v in report.violations)


def test_checker__a_failed_run_or_a_wrong_result_is_named(db):
    failed = make_run(status=RunStatus.FAILED, error=json.dumps({"message": "boom"}))
    wrong = make_run(args=(7, 0.2), result=8)
    found = violations()
    assert any(failed.id in v and "boom" in v for v in found)
    assert any(wrong.id in v and "expected 7" in v for v in found)


def test_checker__three_runs_of_a_key_executing_at_once_exceed_the_limit(db):
    runs = [make_run(task="chaos.limited", args=("k0", n)) for n in range(3)]
    for n, run in enumerate(runs):
        body(run, "w1", start=1 + n * 0.1, end=2, key="k0")
    [message] = violations()
    assert "3 runs executing at once" in message and all(run.id in message for run in runs)


def test_checker__a_killed_attempt_counts_until_its_run_runs_again(db):
    killed, a, b = (make_run(task="chaos.limited", args=("k0", n)) for n in range(3))
    fault("kill_child", 1.5, [100])
    claim(killed, 100, 0.5)
    # Killed inside its body at 1.5 (no end); its run goes on at 9: it held its slot till then.
    body(killed, "w1", start=[1, 9], end=[1.5, 9.5], pid=[100, 200])
    ChaosAttempt.objects.filter(run_id=killed.id, n=1).update(ended=None)
    body(a, "w1", start=3, end=4, key="k0")
    body(b, "w1", start=3.5, end=5, key="k0")
    ChaosAttempt.objects.filter(run_id=killed.id).update(key="k0")
    assert "3 runs executing at once" in violations()[0]
    ChaosAttempt.objects.filter(run_id=b.id).update(started=at(10), ended=at(11))
    assert violations() == []


def test_checker__a_cancelled_run_that_went_on_is_named(db):
    run = make_run(task="chaos.cancellable", args=(1, 3600), status=RunStatus.CANCELLED, cancel_requested_at=at(50))
    body(run, "s0", start=1)
    Step.objects.filter(run=run).update(finished_at=at(120))
    [message] = violations()
    assert run.id in message and "after the run stopped" in message


def test_checker__a_waiter_must_get_its_own_event(db):
    run = make_run(task="chaos.waiter", args=(5,), result="other-token")
    event = Event.objects.create(name="chaos.go", data=json.dumps({"n": 5, "token": "t5"}), received_at=at(1))
    output = {"event": {"name": "chaos.go", "data": {"n": 5, "token": "t5"}, "id": "x", "_row": event.pk}}
    Step.objects.create(
        run=run, step_id="evt", kind="wait", status="completed", output=serialization.dumps(output, "o"),
        started_at=at(1), finished_at=at(2),
    )  # fmt: skip
    [message] = violations()
    assert run.id in message and "its event carried 't5'" in message


def test_checker__a_sleep_that_ended_early_is_named(db):
    run = make_run()
    sleep_step(run, "nap", wake=10, finished=9)
    [message] = violations()
    assert run.id in message and "sleep 'nap' ended" in message


def batch(ns, run=True, **fields):
    """A completed chaos.batched run of the calls ``ns`` (with their call rows), or only the rows."""
    run_row = None
    if run:
        kwargs = json.dumps({"items": [{"key": "k0", "n": n} for n in ns]})
        run_row = make_run("chaos.batched", (), result=sorted(ns), kwargs=kwargs)
    ids = []
    for n in ns:
        call_id = str(uuid.uuid4())
        BatchItem.objects.create(
            id=call_id, task_name="chaos.batched", batch_key="chaos.batched:k0", max_size=3,
            arguments=json.dumps({"key": "k0", "n": n}), created_at=at(0), due_at=at(0.5), run=run_row,
        )  # fmt: skip
        ids.append(call_id)
    return run_row, ids


def test_checker__every_batched_call_in_exactly_one_batch(db):
    run, ids = batch([0, 1, 2])
    _, more = batch([3])
    assert checker.check(batched=ids + more).violations == []
    [lost] = checker.check(batched=[*ids, *more, "gone"]).violations
    assert "gone" in lost and "lost" in lost
    BatchItem.objects.filter(id=ids[0]).update(run=None)
    found = checker.check(batched=ids).violations
    assert any(ids[0] in m and "never joined" in m for m in found)
    assert any(run.id in m and "executes calls [0, 1, 2]" in m for m in found)


def test_checker__a_batched_call_in_two_batch_runs_is_a_duplicate(db):
    first, ids = batch([0, 1])
    second = make_run("chaos.batched", (), result=[0, 1], kwargs=first.kwargs)  # no call rows of its own
    found = checker.check(batched=ids).violations
    assert any("n=0" in m and "duplicated" in m for m in found)
    assert any(second.id in m and "executes calls" in m for m in found)
