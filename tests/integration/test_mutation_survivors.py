"""Behaviour that mutation testing (mutmut) showed no test guarded: one test per surviving mutant.

docs/reliability.md "Mutation testing (mutmut)" lists each survivor and the test that kills it.
"""

import json
from datetime import datetime, timedelta

import pytest
from django.test import override_settings

from celery_durable import Concurrency, Timeouts, durable_task, get_run, replay, send_event, step
from celery_durable.exceptions import RunStateError
from celery_durable.models import Event as EventRow
from celery_durable.models import Run, Slot, Step
from celery_durable.states import RunStatus
from celery_durable.store import claims, recovery, runs
from tests.testapp import flows, observe_tasks, tasks


@durable_task(name="ms.on_event_deadline", on_event="ms.go", timeouts=Timeouts(finish=timedelta(hours=1)))
def on_event_deadline(event):
    return event.received_at.isoformat() if event.received_at else None


def test_resolve_wait__a_run_resumed_by_an_event_is_marked_published_so_a_lost_message_is_resent(durable):
    run = flows.confirm.delay(7)
    durable.run_until_idle(advance_clock=False)
    assert get_run(run.id).status == RunStatus.WAITING
    durable.clock.advance(1)
    send_event("user.confirmed", {"user_id": 7})
    resumed = get_run(run.id)
    assert resumed.status == RunStatus.QUEUED
    assert resumed.published_at == durable.clock.now()
    # Its message lost: the sweeper republishes it.
    assert [m.run_id for m in recovery.take_unpublished(-1, 100)] == [run.id]


def test_replay__a_replayed_run_is_marked_published_so_a_lost_message_is_resent(durable):
    durable.fail_step("t.three_steps", "two", ValueError("no"), times=10)
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert get_run(run.id).status == RunStatus.FAILED
    durable.clock.advance(1)
    replay(run.id)
    replayed = get_run(run.id)
    assert replayed.status == RunStatus.QUEUED
    assert replayed.published_at == durable.clock.now()
    assert [m.run_id for m in recovery.take_unpublished(-1, 100)] == [run.id]


def _keyless_two_limits(run_id, user_id, team):
    """A run of ``f.two_limits`` recorded without intake (as ``send_task`` does): no slot keys."""
    assert runs.create(
        run_id=run_id, task_name="f.two_limits", args=json.dumps([user_id, team]), kwargs="{}", options="{}"
    )


def test_reclaim__a_run_recorded_without_keys_records_both_and_gives_both_slots_back(durable):
    _keyless_two_limits("keyless", 1, "red")
    durable.run_until_idle()
    assert durable.result("keyless") == 1
    run = Run.objects.get(id="keyless")
    assert run.slot_key1 and run.slot_key2 and run.slot_key1 != run.slot_key2
    slots = dict(Slot.objects.values_list("key", "in_use"))
    assert len(slots) == 2
    assert set(slots.values()) == {0}


def test_reclaim__a_run_sent_back_to_the_backlog_holds_no_lease(durable):
    _keyless_two_limits("keyless", 1, "red")
    durable.clock.advance(1)  # the keyless run is the oldest: it executes first
    holder = flows.two_limits.delay(1, "blue")  # takes user 1's only slot at intake
    assert durable.run_next() == "keyless"
    backlogged = get_run("keyless")
    assert backlogged.status == RunStatus.PENDING
    assert (backlogged.lease_owner, backlogged.lease_expires_at) == (None, None)
    durable.run_until_idle()
    assert (durable.result(holder.id), durable.result("keyless")) == (1, 1)


def test_extend_leases__pushes_out_the_owners_leases_and_returns_the_runs_asked_to_cancel(durable):
    for run_id in ("mine", "mine-cancelled", "theirs"):
        assert runs.create(run_id=run_id, task_name="t.add", args="[1, 2]", kwargs="{}", options="{}")
    assert claims.claim("mine", "w1", 30) is not None
    assert claims.claim("mine-cancelled", "w1", 30) is not None
    assert claims.claim("theirs", "w2", 30) is not None
    Run.objects.filter(id="mine-cancelled").update(cancel_requested_at=durable.clock.now())
    before = dict(Run.objects.values_list("id", "lease_expires_at"))
    durable.clock.advance(10)
    asked = claims.extend_leases("w1", ["mine", "mine-cancelled", "theirs"], 60)
    assert asked == {"mine-cancelled"}
    after = dict(Run.objects.values_list("id", "lease_expires_at"))
    expected = durable.clock.now() + timedelta(seconds=60)
    assert (after["mine"], after["mine-cancelled"]) == (expected, expected)
    assert after["theirs"] == before["theirs"]  # another worker's lease is not this heartbeat's


def test_record_call__a_run_started_by_on_event_gets_its_finish_deadline(durable):
    send_event("ms.go", {})
    run = Run.objects.get(task_name="ms.on_event_deadline")
    assert run.finish_by == durable.clock.now() + timedelta(hours=1)


def test_as_event__the_event_a_run_receives_has_its_received_at(durable):
    returned = send_event("ms.go", {})
    row = EventRow.objects.get(name="ms.go")
    assert returned.received_at == row.received_at
    durable.run_until_idle(advance_clock=False)
    run = Run.objects.get(task_name="ms.on_event_deadline")
    assert datetime.fromisoformat(durable.result(run.id)) == row.received_at


def test_with_earlier__keeps_the_earlier_attempts_type_and_iso_time(durable):
    durable.fail_step("t.three_steps", "two", KeyError("first"))
    durable.fail_step("t.three_steps", "two", ValueError("second"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    record = json.loads(Step.objects.get(run_id=run.id, step_id="two").error)
    (earlier,) = record["earlier"]
    assert earlier["type"] == "KeyError"
    assert "T" in earlier["at"] and datetime.fromisoformat(earlier["at"])


@pytest.mark.django_db
@override_settings(CELERY_DURABLE={"OBSERVE_PLAIN_TASKS": ["obs.*"]})
def test_observed_ended__a_task_retried_once_has_one_run_step_with_two_attempts():
    result = observe_tasks.flaky.apply((1,))
    assert result.get() == 1
    (only,) = Step.objects.filter(run_id=result.id)
    assert (only.step_id, only.kind, only.attempts, only.status) == ("run", "run", 2, "completed")


def test_cancel_descendant__a_run_cancelled_by_cancel_on_names_the_event(durable):
    run = flows.cancellable.delay(3)
    durable.run_until_idle(advance_clock=False)
    send_event("order.cancelled", {"order_id": 3})
    record = get_run(run.id)
    assert record.status == RunStatus.CANCELLED
    assert record.cancel_reason == "cancelled by event 'order.cancelled'"


def test_record_call__the_message_of_a_run_started_by_on_event_carries_its_arguments(
    durable, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        send_event("ms.go", {"n": 1})
    (message,) = [m for m in durable.published if m.task_name == "ms.on_event_deadline"]
    assert message.args == "[]"
    assert json.loads(message.kwargs)["event"]["data"] == {"n": 1}


@durable_task(name="ms.limited_parent", concurrency=Concurrency(limit=1, key="account"))
def limited_parent(account):
    return step.invoke("child", flows.sleepy.s(3600))


def test_wait_again__a_parent_woken_before_its_child_finished_waits_again_and_frees_its_slot(durable):
    parent = limited_parent.delay("a")
    assert durable.run_next() == parent.id  # records its child and waits
    child = Run.objects.get(parent_id=parent.id)
    assert durable.run_next() == child.id  # the child sleeps for an hour
    Run.objects.filter(id=parent.id).update(status=RunStatus.QUEUED)  # woken early (e.g. a redelivery)
    assert durable.run_next() == parent.id
    woken = get_run(parent.id)
    assert (woken.status, woken.holds_slots) == (RunStatus.WAITING, False)
    assert Slot.objects.get().in_use == 0


@pytest.mark.django_db
@override_settings(CELERY_DURABLE={"OBSERVE_PLAIN_TASKS": ["obs.*"]})
def test_replay__of_an_observed_run_is_refused_naming_the_operation_and_why():
    failed = observe_tasks.broken.apply(("x",))
    with pytest.raises(RunStateError) as refused:
        replay(failed.id)
    assert (refused.value.run_id, refused.value.operation) == (failed.id, "replay")
    assert "observed plain Celery task" in refused.value.why
    assert get_run(failed.id).status == RunStatus.FAILED
