"""Races made deterministic: a competing transaction commits at an exact point of a transition.

See ``race_tools``: the competitor runs just before a given statement; it commits from a
second connection on PostgreSQL and MariaDB, and on the same connection on SQLite (whose
write lock, taken at ``BEGIN IMMEDIATE``, lets no other writer commit inside an open
transaction).
"""

import pytest
from celery.exceptions import Ignore
from django.db import connection

from celery_durable.models import Run, Slot, Step
from celery_durable.states import RunStatus
from celery_durable.store import claims, endings, recovery, slots
from celery_durable.store import replay as replay_store
from celery_durable.store.cancellation import cancel, stop_at_boundary
from tests.integration.race_tools import before_statement, concurrently, take_over, update_of
from tests.testapp import flows, tasks
from tests.testapp.models import Ledger

transactional = pytest.mark.django_db(transaction=True)


def take_over_later(durable, run_id):
    """The competitor: the lease has expired (clock + 31 s) and worker-b claims the run."""

    def action():
        durable.clock.advance(31)
        return concurrently(lambda: take_over(run_id))

    return action


def reap_later(durable):
    """The competitor: the lease has expired (clock + 31 s) and the reaper queues the run again."""

    def action():
        durable.clock.advance(31)
        return concurrently(lambda: recovery.take_expired(3, 100))

    return action


@transactional
@pytest.mark.parametrize(
    "checkpoint, competitor",
    [("insert", take_over_later), ("update", take_over_later), ("update", reap_later)],
    ids=["insert-taken_over", "update-taken_over", "update-reaped"],
)
def test_atomic_step__a_claim_committed_before_its_commit__rolls_its_writes_back(
    durable, deliver, checkpoint, competitor
):
    """The row-lock fence of an atomic step: its writes commit only if the run is still ours.

    The takeover (or the reaper) commits after the step's checkpoint was written (INSERT,
    or UPDATE of a step that failed before) and before the step's COMMIT: the fence UPDATE
    must refuse. (With the INSERT, PostgreSQL's reaper skips the row: the foreign key check
    holds a share lock that its FOR UPDATE SKIP LOCKED respects.)
    """
    if checkpoint == "insert" and connection.vendor == "mysql":
        pytest.skip("InnoDB's foreign key check share-locks the run row at the checkpoint INSERT: no claim commits")
    run = tasks.atomic_task.delay(10, False)
    now = durable.clock.now()
    if checkpoint == "update":  # a first attempt failed: the checkpoint updates the step's row
        Run.objects.filter(id=run.id).update(executions=1)
        Step.objects.create(
            run_id=run.id, step_id="write", kind="run", status="failed", attempts=1, started_at=now, finished_at=now
        )
    fence = update_of(Run, "generation")
    action = competitor(durable, run.id) if competitor is take_over_later else competitor(durable)
    with before_statement(fence, action) as fired:
        outcome = deliver(run.id)
    assert fired, "the fence statement did not run"
    assert isinstance(outcome, Ignore), outcome  # the execution dropped itself (no library error)
    assert Ledger.objects.filter(run_id=run.id).count() == 0
    assert not Step.objects.filter(run_id=run.id, status="completed").exists()
    if connection.vendor != "sqlite":  # (on SQLite the emulated competitor rolled back with the step)
        record = Run.objects.get(id=run.id)
        expected = ("running", "worker-b") if competitor is take_over_later else ("queued", None)
        assert (record.status, record.lease_owner) == expected
    # The new holder runs the step once.
    Run.objects.filter(id=run.id).update(status=RunStatus.QUEUED, lease_owner=None, lease_expires_at=None)
    deliver(run.id)
    assert list(Ledger.objects.filter(run_id=run.id).values_list("amount", flat=True)) == [10]


@transactional
def test_stop_at_boundary__a_takeover_between_its_read_and_its_write__leaves_the_run_to_its_new_holder(
    durable, deliver
):
    run = tasks.three_steps.delay(1)
    claim = claims.claim(run.id, "worker-a", 30)
    cancel(run.id, "stop")
    with before_statement(update_of(Run, "status", "error"), take_over_later(durable, run.id)) as fired:
        stop_at_boundary(run.id, claim.generation)
    assert fired
    if connection.vendor != "sqlite":
        record = Run.objects.get(id=run.id)
        assert (record.status, record.lease_owner, record.generation) == ("running", "worker-b", claim.generation + 1)
    else:  # the emulated takeover and the refused cancel are one transaction
        assert Run.objects.get(id=run.id).status == RunStatus.RUNNING


@transactional
def test_stop_at_boundary__a_takeover_between_its_read_and_its_write__reports_nothing_and_spares_the_children(
    durable,
):
    now = durable.clock.now()
    run = tasks.three_steps.delay(1)
    claim = claims.claim(run.id, "worker-a", 30)
    Run.objects.create(
        id="grandchild-2", task_name="t.add", status="queued", parent_id=run.id, parent_step="s", created_at=now
    )
    cancel(run.id, "stop")
    with before_statement(update_of(Run, "status", "error"), take_over_later(durable, run.id)):
        outcome = stop_at_boundary(run.id, claim.generation)
    assert outcome is None
    assert Run.objects.get(id="grandchild-2").status == RunStatus.QUEUED


@transactional
def test_event_sent_while_a_wait_commits__resumes_the_run(durable, deliver):
    """``send_event`` looked for waiting runs before the wait committed; the run looks again after.

    The event is sent (and committed) just before the wait's UPDATE: the run is not yet
    waiting when ``send_event`` looks, and the event was not there when the run looked.
    """
    run = flows.confirm.delay(5)
    wait_update = update_of(Run, "lease_owner", "lease_expires_at", "status", "waiting_for")
    event = lambda: durable.send_event("user.confirmed", {"user_id": 5})  # noqa: E731
    with before_statement(wait_update, lambda: concurrently(event)) as fired:
        assert isinstance(deliver(run.id), Ignore)  # suspended
    assert fired
    record = Run.objects.get(id=run.id)
    assert (record.status, record.waiting_for) == (RunStatus.QUEUED, None)
    assert run.id in [message.run_id for message in durable.published]
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == 5


@transactional
def test_release__of_a_run_released_concurrently_gives_its_slot_back_once(durable):
    """Two releases of one finished run (its execution, and the services' backstop) hand over one slot."""
    holder, *waiting = (flows.per_user.delay(9).id for _ in range(3))
    Run.objects.filter(id=holder).update(status=RunStatus.COMPLETED)
    other_release = lambda: concurrently(lambda: slots.release(holder))  # noqa: E731
    with before_statement(update_of(Run, "holds_slots"), other_release) as fired:
        assert slots.release(holder) == []
    assert fired
    statuses = [Run.objects.get(id=run_id).status for run_id in waiting]
    assert statuses == [RunStatus.QUEUED, RunStatus.PENDING]  # one promoted, in call order
    assert Slot.objects.get(key="f.per_user:user_id:9").in_use == 1


def test_debounce__does_not_rewrite_a_run_that_started_and_sleeps(durable):
    from tests.testapp import fence_tasks

    first = fence_tasks.debounced_nap.delay("acme", 1)
    durable.clock.advance(60)
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.get(id=first.id).status == RunStatus.SLEEPING
    before = Run.objects.filter(id=first.id).values("args", "wake_at").get()
    second = fence_tasks.debounced_nap.delay("acme", 2)  # within the debounce timeout of the first call
    assert second.id != first.id
    assert Run.objects.filter(id=first.id).values("args", "wake_at").get() == before


@transactional
def test_cancel__of_a_run_that_completes_meanwhile__is_an_error_and_changes_nothing(durable):
    """The run was read as running; it completed before the cancel request was written."""
    from celery_durable.exceptions import RunStateError

    run = tasks.add.delay(1, 2)
    claim = claims.claim(run.id, "worker-a", 30)
    completes = lambda: concurrently(lambda: endings.complete(run.id, claim.generation, "3"))  # noqa: E731
    hook = before_statement(update_of(Run, "cancel_requested_at", "cancel_reason"), completes)
    with hook as fired, pytest.raises(RunStateError):
        cancel(run.id, "too late")
    assert fired
    record = Run.objects.get(id=run.id)
    # (On SQLite the emulated completion rolled back with the refused cancel's transaction.)
    completed = RunStatus.RUNNING if connection.vendor == "sqlite" else RunStatus.COMPLETED
    assert (record.status, record.cancel_requested_at, record.cancel_reason) == (completed, None, None)


@transactional
def test_cancel__of_a_sleeping_run_that_a_worker_claims_meanwhile__asks_it_to_stop(durable):
    """The run was read as sleeping; it woke and was claimed before the cancel was written."""
    run = flows.sleepy.delay(60)
    durable.run_next()
    assert Run.objects.get(id=run.id).status == RunStatus.SLEEPING

    def wakes_and_is_claimed():
        durable.clock.advance(60)
        assert [n.run_id for n in recovery.take_due(10)] == [run.id]
        return take_over(run.id)

    competitor = lambda: concurrently(wakes_and_is_claimed)  # noqa: E731
    with before_statement(update_of(Run, "status", "cancel_requested_at"), competitor) as fired:
        outcome = cancel(run.id, "stop")
    assert fired
    assert (outcome.cancelled, outcome.requested) == ([], [run.id])
    record = Run.objects.get(id=run.id)
    assert (record.status, record.lease_owner, record.cancel_reason) == (RunStatus.RUNNING, "worker-b", "stop")


@transactional
def test_promote__racing_another_promoter_for_the_same_backlog_head__promotes_it_once(durable):
    """Two promoters (the services' backstop, a release) read the same head; one takes it."""
    key = "f.per_user:user_id:4"
    holder, head, last = (flows.per_user.delay(4).id for _ in range(3))
    # The holder ended and gave its slot back without promoting (a release that raced a suspension).
    Run.objects.filter(id=holder).update(status=RunStatus.COMPLETED, holds_slots=False)
    Slot.objects.filter(key=key).update(in_use=0)
    other = lambda: concurrently(lambda: slots.promote([key]))  # noqa: E731
    with before_statement(update_of(Run, "status", "published_at"), other) as fired:
        mine = slots.promote([key])
    assert fired
    statuses = {
        run_id: Run.objects.filter(id=run_id).values_list("status", "holds_slots").get() for run_id in (head, last)
    }
    assert statuses == {head: (RunStatus.QUEUED, True), last: (RunStatus.PENDING, False)}
    assert Slot.objects.get(key=key).in_use == 1
    assert mine == []  # the other promoter published it


@transactional
def test_replay__racing_another_replay_of_the_same_run__queues_it_once(durable):
    """Two operators press "replay" at once: one replays, the other gets RunStateError."""
    from celery_durable.exceptions import RunStateError

    if connection.vendor == "mysql":
        pytest.skip("InnoDB: the step DELETE of the first replay locks the rows the second one scans (serialized)")
    run = tasks.outside_error.delay()  # fails outside any step: replay deletes no row
    durable.run_until_idle()
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED
    other = lambda: concurrently(lambda: replay_store.replay(run.id))  # noqa: E731
    hook = before_statement(update_of(Run, "status", "error"), other)
    with hook as fired, pytest.raises(RunStateError):
        replay_store.replay(run.id)
    assert fired
    if connection.vendor != "sqlite":  # (on SQLite the emulated replay rolled back with the refused one)
        assert Run.objects.get(id=run.id).status == RunStatus.QUEUED
