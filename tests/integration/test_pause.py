"""Pause and resume a task (or one concurrency key), in-process on the real database."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_durable import (
    DurableConfigError,
    RunNotFound,
    cancel,
    explain,
    get_run,
    pause,
    resume,
    send_event,
)
from celery_durable.exceptions import TaskNotRegistered
from celery_durable.models import Pause, Run, Slot, Step
from tests.testapp import flows
from tests.testapp.models import BodyRun


def bodies(run_id):
    return list(BodyRun.objects.filter(run_id=run_id).order_by("id").values_list("step", flat=True))


def drain(durable):
    """Execute what is due now, without moving the clock."""
    while durable.run_next() is not None:
        pass


def status(run):
    return Run.objects.get(id=run.id).status


def test_paused_task__calls_are_recorded_none_starts__resume_runs_them_in_call_order(
    durable, django_capture_on_commit_callbacks
):
    pause("f.pausable", by="ops")
    calls = []
    for n in range(3):
        calls.append(flows.pausable.delay(n))
        durable.clock.advance(1)  # call order is created_at order (the fake clock stands still otherwise)
    assert [status(r) for r in calls] == ["queued"] * 3  # recorded, published
    while durable.run_next() is not None:
        pass
    assert [status(r) for r in calls] == ["paused"] * 3  # each delivery was refused at its claim
    assert BodyRun.objects.count() == 0
    assert Run.objects.filter(status="paused", lease_owner__isnull=False).count() == 0
    durable.published.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert resume("f.pausable") == [r.id for r in calls]
    assert [m.run_id for m in durable.published] == [r.id for r in calls]  # published in call order
    assert not Pause.objects.exists()
    durable.run_until_idle()
    assert [durable.result(r.id) for r in calls] == [0, 1, 2]
    assert list(BodyRun.objects.filter(step="one").order_by("id").values_list("run_id", flat=True)) == [
        r.id for r in calls
    ]


def test_running_run__stops_at_its_next_step_boundary_keeping_the_step__resume_continues(durable):
    run = flows.pausable.delay(7, pause_in_first=True)
    durable.run_next()
    # Step "one" paused the task while executing: its checkpoint is kept, "two" did not start.
    assert status(run) == "paused"
    assert bodies(run.id) == ["one"]
    assert list(Step.objects.filter(run_id=run.id).values_list("step_id", "status")) == [("one", "completed")]
    row = Run.objects.get(id=run.id)
    assert row.lease_owner is None and row.lease_expires_at is None
    assert explain(run.id).gate == "paused"
    assert resume("f.pausable") == [run.id]
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    assert bodies(run.id) == ["one", "two", "three"]  # "one" was not executed again


def test_pause_survives__it_is_a_row_and_a_second_pause_does_nothing(durable):
    first = pause("f.pausable", by="ops")
    again = pause("f.pausable", by="someone else")
    assert first.pk == again.pk and Pause.objects.count() == 1
    assert Pause.objects.get().by == "ops"
    assert resume("f.pausable") == [] and resume("f.pausable") == []
    assert not Pause.objects.exists()


def test_sleeping_and_waiting_runs__are_held_when_they_wake__then_resume(durable):
    sleeper = flows.sleepy.delay(60)
    waiter = flows.confirm.delay(5)
    drain(durable)
    assert status(sleeper) == "sleeping" and status(waiter) == "waiting"
    pause("f.sleepy")
    pause("f.confirm")
    durable.clock.advance(61)
    durable.wake_due()
    send_event("user.confirmed", {"user_id": 5})
    drain(durable)
    assert status(sleeper) == "paused" and status(waiter) == "paused"
    assert bodies(sleeper.id) == ["before"]
    assert resume("f.sleepy") == [sleeper.id]
    assert resume("f.confirm") == [waiter.id]
    durable.run_until_idle()
    assert durable.result(sleeper.id) == 2
    assert get_run(waiter.id).status == "completed"


def test_keyed_pause__holds_one_key_only__the_backlog_keeps_its_order(durable):
    a = [flows.pausable_keyed.delay(1, n) for n in range(3)]  # key 1: one queued, two in the backlog
    b = flows.pausable_keyed.delay(2, 9)
    key1 = "f.pausable_keyed:user_id:1"
    assert Run.objects.get(id=a[0].id).slot_key1 == key1
    pause("f.pausable_keyed", key1)
    durable.run_until_idle()
    assert durable.result(b.id) == 9  # another key is not held up
    assert [status(r) for r in a] == ["paused", "pending", "pending"]
    held = Run.objects.get(id=a[0].id)
    assert held.holds_slots and Slot.objects.get(key=key1).in_use == 1  # the paused run keeps its slot
    why = explain(a[1].id)
    assert why.gate == "paused" and why.data["key"] == key1
    assert resume("f.pausable_keyed", key1) == [a[0].id]
    durable.run_until_idle()
    assert [durable.result(r.id) for r in a] == [0, 1, 2]
    order = [
        s for s in BodyRun.objects.filter(run_id__in=[r.id for r in a]).order_by("id").values_list("step", flat=True)
    ]
    assert order == ["one-0", "two-0", "one-1", "two-1", "one-2", "two-2"]
    assert Slot.objects.get(key=key1).in_use == 0


def test_resuming_a_key__leaves_runs_the_whole_task_pause_still_holds(durable):
    run = flows.pausable_keyed.delay(1, 0)
    key1 = "f.pausable_keyed:user_id:1"
    pause("f.pausable_keyed")
    pause("f.pausable_keyed", key1)
    durable.run_until_idle()
    assert status(run) == "paused"
    assert resume("f.pausable_keyed", key1) == []
    assert status(run) == "paused"
    assert resume("f.pausable_keyed") == [run.id]
    durable.run_until_idle()
    assert durable.result(run.id) == 0


def test_a_paused_run_can_be_cancelled(durable):
    pause("f.pausable")
    run = flows.pausable.delay(1)
    durable.run_until_idle()
    assert status(run) == "paused"
    cancel(run.id)
    assert status(run) == "cancelled"
    assert resume("f.pausable") == []


def test_throttled_runs__keep_their_spacing_across_a_pause(durable):
    runs = [flows.throttled.delay("t", 0)]
    durable.clock.advance(1)
    runs.append(flows.throttled.delay("t", 1))  # 1 per 10 s: the second at +10 s
    first_at = Run.objects.get(id=runs[1].id).wake_at
    assert first_at is not None
    pause("f.throttled")
    drain(durable)
    assert status(runs[0]) == "paused"
    durable.clock.advance(100)
    durable.wake_due()
    drain(durable)
    assert status(runs[1]) == "paused"
    assert resume("f.throttled") == [r.id for r in runs]
    # They take new throttle slots in order: the first now, the second one period later.
    assert Run.objects.get(id=runs[0].id).wake_at is None
    later = Run.objects.get(id=runs[1].id).wake_at
    assert later is not None and (later - durable.clock.now()).total_seconds() == pytest.approx(10)
    durable.run_until_idle()
    assert [durable.result(r.id) for r in runs] == [0, 1]


def test_claim_of_an_unpaused_task__costs_no_extra_query(durable, deliver):
    run = flows.pausable.delay(1)
    queries = []
    deliver(run.id, queries)
    assert get_run(run.id).status == "completed"
    assert not any("durable_pause" in q and q.lstrip().upper().startswith("SELECT") for q in queries)


def test_bad_input__named_errors_and_nothing_changes(durable):
    with pytest.raises(TaskNotRegistered):
        pause("no.such.task")
    with pytest.raises(DurableConfigError):
        pause("")
    with pytest.raises(DurableConfigError):
        pause("f.pausable", key=3)
    with pytest.raises(DurableConfigError):
        resume("f.pausable", key="")
    with pytest.raises(RunNotFound):
        explain("no-such-run")
    assert not Pause.objects.exists()


def test_explain_is_a_pure_read(durable):
    run = flows.pausable.delay(1)
    with CaptureQueriesContext(connection) as captured:
        explain(run.id)
    assert all(q["sql"].lstrip().upper().startswith("SELECT") for q in captured.captured_queries)


def test_a_finished_run__is_not_held_by_a_later_pause(durable):
    from celery_durable.store import pausing

    run = flows.pausable.delay(1)
    durable.run_until_idle()
    pause("f.pausable")
    assert pausing.hold_queued(run.id) is False  # a redelivery of a finished run
    assert status(run) == "completed"


def test_hold_at_a_boundary__a_cancellation_requested_meanwhile_wins(durable):
    from celery_durable.store import pausing

    run = flows.pausable.delay(1)
    row = Run.objects.get(id=run.id)
    Run.objects.filter(id=run.id).update(status="running", generation=row.generation + 1)
    pause("f.pausable")
    cancel(run.id)  # a running run: requested only
    assert pausing.hold_running(run.id, row.generation + 1) is False
    assert status(run) == "running"  # left for the stop at the boundary (the engine's _not_held)


def test_hold_at_a_boundary__a_pause_lifted_meanwhile_queues_the_run_again(durable):
    from celery_durable.store import pausing
    from celery_durable.store.messages import RunMessage

    run = flows.pausable.delay(1)
    generation = Run.objects.get(id=run.id).generation + 1
    Run.objects.filter(id=run.id).update(status="running", generation=generation, lease_owner="w")
    assert pausing.hold_running(run.id, generation - 1) is False  # not ours: nothing changes
    assert status(run) == "running"
    message = pausing.hold_running(run.id, generation)  # no pause any more
    assert isinstance(message, RunMessage) and message.run_id == run.id
    row = Run.objects.get(id=run.id)
    assert (row.status, row.lease_owner) == ("queued", None)
    durable.run_until_idle()
    assert durable.result(run.id) == 1


def test_keyed_pause__matches_the_key_byte_for_byte(durable):
    alice = flows.per_user.delay("alice")
    pause("f.per_user", "f.per_user:user_id:Alice")
    drain(durable)
    assert durable.result(alice.id) == "alice"  # "Alice" is another key (MySQL too)
    assert resume("f.per_user", "f.per_user:user_id:alice") == []
    assert Pause.objects.filter(key="f.per_user:user_id:Alice").exists()  # not lifted by another key
