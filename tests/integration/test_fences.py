"""Every transition of an execution is refused once the execution lost its run, and changes nothing.

An execution holds its run at the generation its claim took. It loses the run when:

- ``taken_over``: its lease expired and another worker claimed the run (generation + 1);
- ``reaped``: its lease expired and the reaper queued the run again (same generation,
  status ``queued``);
- ``cancel_requested``: the run is still its own, but a cancellation was requested: it may
  only stop at the boundary (no retry, no suspension, no checkpoint).

Each case asserts the transition's refusal and that no row of the database changed.
The run under test is a child (of ``parent-1``, waiting for it) with a child of its own,
so a wrong completion, failure or cancellation would also show in those rows.
"""

from dataclasses import dataclass
from datetime import timedelta

import pytest

from celery_durable import serialization
from celery_durable.exceptions import _Cancelled, _LeaseLost
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from celery_durable.store import claims, endings, event_waits, recovery, runs, slots
from celery_durable.store import suspension as suspend
from celery_durable.store.cancellation import cancel, stop_at_boundary
from celery_durable.store.checkpoints import CheckpointStore
from celery_durable.store.rows import message_for
from tests.integration.race_tools import before_statement, snapshot, take_over
from tests.testapp import flows, tasks

ERROR = {"type": "ValueError", "module": "builtins", "message": "boom", "traceback": ""}


@dataclass
class Held:
    run_id: str
    generation: int
    parent_id: str
    clock: object

    def later(self, seconds=0):
        return self.clock.now() + timedelta(seconds=seconds)


@pytest.fixture
def held(durable):
    """A run claimed by ``worker-a`` (one step done, one child queued), child of a waiting parent.

    The parent waits for two children (its other child is still running).
    """
    now = durable.clock.now()
    parent = Run.objects.create(
        id="parent-1", task_name="f.parent", status=RunStatus.WAITING, children_pending=2, created_at=now
    )
    run = tasks.three_steps.delay(1)
    Run.objects.filter(id=run.id).update(parent_id=parent.id, parent_step="fan", child_index=0)
    claim = claims.claim(run.id, "worker-a", 30)
    written(CheckpointStore(run.id, claim.generation), "one", "2", now, exists=False)
    Run.objects.create(
        id="grandchild-1",
        task_name="t.add",
        status=RunStatus.QUEUED,
        parent_id=run.id,
        parent_step="sub",
        child_index=0,
        created_at=now,
    )
    return Held(run.id, claim.generation, parent.id, durable.clock)


def taken_over(held):
    held.clock.advance(31)
    assert take_over(held.run_id) == held.generation + 1


def reaped(held):
    held.clock.advance(31)
    assert recovery.take_expired(3, 100).messages
    assert Run.objects.get(id=held.run_id).status == RunStatus.QUEUED


def cancel_requested(held):
    assert cancel(held.run_id, "stop").requested == [held.run_id]


def taken_over_then_cancel_requested(held):
    taken_over(held)
    cancel_requested(held)


def reaped_with_cancel_requested(held):
    """The worker died (for the reaper) after the cancel was requested: the reaper cancelled the run."""
    cancel_requested(held)
    held.clock.advance(31)
    assert recovery.take_expired(3, 100).cancelled == [held.run_id, "grandchild-1"]


LOST = {
    "taken_over": taken_over,
    "reaped": reaped,
    "cancel_requested": cancel_requested,
}


def written(store, step_id, output, started_at, exists, attempts=1):
    """A checkpoint written at the next step boundary (``flush``): ``save_output`` defers it."""
    store.save_output(step_id, "run", output, attempts, started_at, exists)
    store.flush()


def checkpoint(held):
    with pytest.raises((_LeaseLost, _Cancelled)):
        written(CheckpointStore(held.run_id, held.generation), "two", "4", held.later(), False)


def checkpoint_retry(held):
    """The checkpoint of a step that failed before: an UPDATE of its row (fenced the same way)."""
    with pytest.raises((_LeaseLost, _Cancelled)):
        written(CheckpointStore(held.run_id, held.generation), "one", "5", held.later(), True, attempts=2)


def complete_after_a_step(held, parent_id=None, one_statement=False):
    """The completion that writes the last step's deferred checkpoint in its transaction.

    The checkpoint's fence refuses a taken-over or cancelled run (nothing is written); a reaped
    run passes it, and the completion's own condition then rolls both back. With
    ``one_statement`` (PostgreSQL) both are one statement first, the transaction if it wrote
    nothing.
    """
    store = CheckpointStore(held.run_id, held.generation)
    store.save_output("two", "run", "4", 1, held.later(), False)
    embedded = store.embedded() if one_statement else ()
    try:
        return endings.complete(
            held.run_id, held.generation, '"done"', parent_id, before=store.write_deferred, embedded=embedded
        )
    except (_LeaseLost, _Cancelled):
        return False


TRANSITIONS = {
    "complete": lambda h: endings.complete(h.run_id, h.generation, '"done"'),
    "complete_child": lambda h: endings.complete(h.run_id, h.generation, '"done"', h.parent_id),
    "complete_after_a_step": complete_after_a_step,
    "complete_child_after_a_step": lambda h: complete_after_a_step(h, h.parent_id),
    "complete_after_a_step_one_statement": lambda h: complete_after_a_step(h, one_statement=True),
    "fail": lambda h: endings.fail(h.run_id, h.generation, ERROR, ("two", 1), h.parent_id),
    "retry": lambda h: endings.retry_step(h.run_id, h.generation, "two", 1, ERROR, 0.0, 1.0),
    "retry_later": lambda h: endings.retry_step(h.run_id, h.generation, "two", 1, ERROR, 600.0, 1.0),
    "sleep": lambda h: suspend.sleep(
        h.run_id, h.generation, "nap", serialization.dumps({"wake_at": h.later(60)}, "t"), h.later(60), False
    ),
    "wait": lambda h: suspend.wait(h.run_id, h.generation, "ok", '{"name": "go"}', "go", h.later(60), False),
    "children": lambda h: suspend.children(
        h.run_id,
        h.generation,
        "fan",
        "gather",
        [{"task": "t.add", "args": [1, 2], "kwargs": {}, "options": {}}],
        [True],
        '{"timeout_at": null, "children": 1}',
        None,
    ),
    "wait_again": lambda h: suspend.wait_again(h.run_id, h.generation, None),
    "checkpoint": checkpoint,
    "checkpoint_retry": checkpoint_retry,
}
REFUSED = {"children": None, "checkpoint": None, "checkpoint_retry": None}
# Completion and failure win over a pending cancellation (the run ended anyway), unless the
# completion writes a step's checkpoint: the run then stops at that boundary, as cancelled.
CANCEL_FENCED = [
    "complete_after_a_step",
    "complete_child_after_a_step",
    "complete_after_a_step_one_statement",
    "retry",
    "retry_later",
    "sleep",
    "wait",
    "children",
    "wait_again",
    "checkpoint",
    "checkpoint_retry",
]

# A checkpoint of a reaped run (queued again, same generation) is accepted: the step did run,
# and the next execution replays it instead of running it again; the fence is the generation.
CHECKPOINTS = ["checkpoint", "checkpoint_retry"]
CASES = [
    pytest.param(name, lost, id=f"{name}-{lost}")
    for name in TRANSITIONS
    for lost in LOST
    if (lost != "cancel_requested" or name in CANCEL_FENCED) and (lost != "reaped" or name not in CHECKPOINTS)
]


@pytest.mark.parametrize("name, lost", CASES)
def test_transition_of_an_execution_that_lost_its_run__is_refused_and_changes_nothing(held, name, lost):
    LOST[lost](held)
    before = snapshot()
    outcome = TRANSITIONS[name](held)
    assert outcome == REFUSED.get(name, False)
    assert snapshot() == before


@pytest.mark.parametrize("lost", [taken_over_then_cancel_requested, reaped_with_cancel_requested])
def test_stop_at_boundary__of_an_execution_that_lost_its_run__is_refused_and_changes_nothing(held, lost):
    lost(held)
    before = snapshot()
    assert stop_at_boundary(held.run_id, held.generation) is None
    assert snapshot() == before


def test_stop_at_boundary__of_the_holder__cancels_the_run_its_children_and_counts_it_in_its_parent(held):
    """The positive case of the test above: the same call at the held generation acts."""
    cancel_requested(held)
    outcome = stop_at_boundary(held.run_id, held.generation)
    assert outcome is not None and outcome.cancelled == [held.run_id, "grandchild-1"]
    statuses = dict(Run.objects.values_list("id", "status"))
    assert statuses == {held.run_id: "cancelled", "grandchild-1": "cancelled", "parent-1": "waiting"}
    assert Run.objects.get(id=held.parent_id).children_pending == 1


def test_stopped_by_cancel__is_false_for_a_cancel_of_the_run_someone_else_holds(held):
    """A refused execution stops (as cancelled) only if the cancel concerns its own generation."""
    taken_over_then_cancel_requested(held)
    assert runs.stopped_by_cancel(held.run_id, held.generation) is False
    assert runs.stopped_by_cancel(held.run_id, held.generation + 1) is True


def test_refused_checkpoint__says_lease_lost_not_cancelled_when_the_run_was_taken_over_and_cancelled(held):
    """Through the writer: the stale execution drops itself; it does not report a cancel."""
    taken_over_then_cancel_requested(held)
    with pytest.raises(_LeaseLost):
        written(CheckpointStore(held.run_id, held.generation), "two", "4", held.later(), False)


# --- slots.reclaim: a resumed run whose key is full goes back to the backlog, if still its own ---


@pytest.fixture
def resumed_on_a_full_key(durable):
    """A run of a key with limit 1, resumed after its sleep, while another run holds the slot."""
    sleeper = flows.per_user_sleeps.delay(7, 1)
    durable.run_next()  # starts, sleeps: gives its slot back
    assert Run.objects.get(id=sleeper.id).status == RunStatus.SLEEPING
    holder = flows.per_user_sleeps.delay(7, 2)  # takes the free slot
    assert Run.objects.get(id=holder.id).holds_slots
    durable.clock.advance(60)
    assert durable.wake_due() == 1
    claim = claims.claim(sleeper.id, "worker-a", 30)
    return sleeper.id, claim.generation, {"f.per_user_sleeps:user_id:7": 1}, durable


def test_reclaim__on_a_full_key_sends_the_resumed_run_back_to_the_backlog(resumed_on_a_full_key):
    run_id, generation, limits, _durable = resumed_on_a_full_key
    assert slots.reclaim(run_id, generation, limits, 30) is False
    row = Run.objects.get(id=run_id)
    assert (row.status, row.lease_owner, row.holds_slots) == (RunStatus.PENDING, None, False)


def test_reclaim__through_an_execution_then_promoted_when_the_holder_finishes(resumed_on_a_full_key, deliver):
    """The path of a real delivery: claimed, key full, back to the backlog, promoted by the release."""
    run_id, _generation, _limits, durable = resumed_on_a_full_key
    Run.objects.filter(id=run_id).update(status=RunStatus.QUEUED, lease_owner=None, lease_expires_at=None)
    deliver(run_id)  # this run's delivery: the key is full, it goes to the backlog
    assert Run.objects.get(id=run_id).status == RunStatus.PENDING
    durable.run_until_idle()
    assert durable.result(run_id) == 1
    assert durable.history(run_id) == [("start", "completed", 1), ("nap", "completed", 1), ("end", "completed", 1)]


@pytest.mark.parametrize("lost", ["taken_over", "reaped"])
def test_reclaim__of_an_execution_that_lost_its_run__changes_nothing(resumed_on_a_full_key, lost):
    run_id, generation, limits, durable = resumed_on_a_full_key
    durable.clock.advance(31)
    if lost == "taken_over":
        take_over(run_id)
    else:
        recovery.take_expired(3, 100)
    before = snapshot()
    assert slots.reclaim(run_id, generation, limits, 30) is False
    assert snapshot() == before


# --- status guards of the other conditional UPDATEs ---


def test_child_finishing__does_not_resume_a_parent_that_is_no_longer_waiting_for_it(held):
    """A cancelled parent stays cancelled when its last child completes."""
    Run.objects.filter(id=held.parent_id).update(status=RunStatus.CANCELLED)
    before = snapshot()
    assert suspend.child_finished(held.parent_id) is None
    assert snapshot() == before


def test_event_for_a_wait_that_timed_out__is_not_given_to_the_run(durable):
    run = flows.confirm.delay(3, 60)
    durable.run_next()
    assert Run.objects.get(id=run.id).status == RunStatus.WAITING
    durable.clock.advance(60)
    assert durable.wake_due() == 1  # the timeout: queued again, the wait step still pending
    before = snapshot()
    event = {"name": "user.confirmed", "data": {"user_id": 3}, "id": "e1", "received_at": durable.clock.now()}
    assert suspend.resolve_wait(run.id, "confirmation", event) is None
    assert snapshot() == before
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == "expired"


def test_events_for_many_waits__a_wait_that_timed_out_is_not_given_the_event(durable):
    """The bulk resume of ``send_event`` leaves alone a run that stopped waiting since it was read."""
    run = flows.confirm.delay(4, 60)
    durable.run_next()
    state = Step.objects.get(run_id=run.id, step_id="confirmation")
    durable.clock.advance(60)
    assert durable.wake_due() == 1  # the timeout: queued again, the wait step still pending
    before = snapshot()
    event = {"name": "user.confirmed", "data": {"user_id": 4}, "id": "e2", "received_at": durable.clock.now()}
    wait = event_waits.Wait(state.pk, run.id, "confirmation", state.output, message_for(run.id))
    assert event_waits.resolve_waits([wait], event) == []
    assert snapshot() == before


def test_heartbeat__does_not_extend_the_lease_of_a_run_another_worker_took_over(held):
    taken_over(held)
    before = snapshot()
    assert claims.extend_leases("worker-a", [held.run_id], 300) == set()
    assert snapshot() == before


def test_reclaim__with_a_free_slot_by_an_execution_that_lost_its_run__takes_nothing(durable):
    sleeper = flows.per_user_sleeps.delay(8, 1)
    durable.run_next()  # sleeps: its slot is free again
    durable.clock.advance(60)
    assert durable.wake_due() == 1
    claim = claims.claim(sleeper.id, "worker-a", 30)
    durable.clock.advance(31)
    take_over(sleeper.id)
    before = snapshot()
    assert slots.reclaim(sleeper.id, claim.generation, {"f.per_user_sleeps:user_id:8": 1}, 30) is False
    assert snapshot() == before


def test_reclaim__a_wait_on_the_slot_row_longer_than_the_lease_does_not_hand_the_run_to_a_second_execution(durable):
    """Waiting for a slot row's lock (a release in a stalled worker) outlasts the claim's lease.

    The hook stands for that wait: the clock passes the lease just before the slot is taken.
    The reclaim must start the lease again, or a second worker's claim takes a run whose
    body this execution is about to run (two executions at once).
    """
    sleeper = flows.per_user_sleeps.delay(9, 1)
    durable.run_next()  # sleeps: its slot is free again
    durable.clock.advance(60)
    assert durable.wake_due() == 1
    claim = claims.claim(sleeper.id, "worker-a", 30)
    slot_taken = r"UPDATE\W+celery_durable_slot\W+SET\W+in_use"
    with before_statement(slot_taken, lambda: durable.clock.advance(31)) as fired:
        assert slots.reclaim(sleeper.id, claim.generation, {"f.per_user_sleeps:user_id:9": 1}, 30) is True
    assert fired, "the slot was not taken by an UPDATE the hook saw"
    assert claims.claim(sleeper.id, "worker-b", 30) is None
    row = Run.objects.get(id=sleeper.id)
    assert (row.lease_owner, row.generation, row.holds_slots) == ("worker-a", claim.generation, True)
    assert row.lease_expires_at == durable.clock.now() + timedelta(seconds=30)
