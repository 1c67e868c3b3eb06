"""Issue 14: a limited run completes and hands its slot on in one transaction."""

import threading

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from celery_durable import Concurrency, durable_task
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from celery_durable.store import claims, endings

KEY = "t.handover_one:account:7"


@durable_task(name="t.handover_one", concurrency=Concurrency(limit=1, key="account"))
def handover_one(account, n):
    return n


@durable_task(name="t.handover_two", concurrency=Concurrency(limit=2, key="account"))
def handover_two(account, n, simulate_backstop=False):
    if simulate_backstop:
        # As if the services' backstop had given this run's slot back meanwhile.
        Run.objects.filter(task_name="t.handover_two", status=RunStatus.RUNNING).update(holds_slots=False)
        Slot.objects.filter(key="t.handover_two:account:7").update(in_use=F("in_use") - 1)
    return n


@pytest.fixture
def first_hand_over_fails(monkeypatch):
    """The first hand-over raises (as a slot row's lock could); one entry per hand-over tried.

    A hand-over is ``slots._hand_over``, or on PostgreSQL the completion's own statement
    (``endings.complete_handing_over``).
    """
    from django.db import OperationalError

    from celery_durable.store import endings, slots

    calls = []

    def fails_once(real):
        def hand_over(*args):
            calls.append(args)
            if len(calls) == 1:
                raise OperationalError("deadlock detected")
            return real(*args)

        return hand_over

    monkeypatch.setattr(slots, "_hand_over", fails_once(slots._hand_over))
    monkeypatch.setattr(endings, "complete_handing_over", fails_once(endings.complete_handing_over))
    return calls


def statements(durable):
    with CaptureQueriesContext(connection) as captured:
        durable.run_next()
    return [query["sql"] for query in captured.captured_queries]


def test_completion__clears_holds_slots_and_hands_the_slot_on_in_its_own_transaction(durable):
    first, second = handover_one.delay(7, 1), handover_one.delay(7, 2)
    assert Run.objects.get(id=second.id).status == RunStatus.PENDING
    sql = statements(durable)
    # The completion's UPDATE: a statement of its own, or (PostgreSQL) the writable CTE of the
    # one statement that also hands the slot on.
    completions = [n for n, s in enumerate(sql) if s.startswith(("UPDATE", "WITH")) and "'completed'" in s]
    assert len(completions) == 1 and '"holds_slots" = ' in sql[completions[0]].replace("`", '"')
    if connection.vendor == "postgresql":
        assert "FOR UPDATE SKIP LOCKED" in sql[completions[0]]  # the hand-over, in the same statement
    # No statement after the completion reads or writes the finished run again to release
    # its slot (a second transaction did: SELECT its keys, UPDATE holds_slots).
    assert not [s for s in sql[completions[0] + 1 :] if first.id in s]
    assert Run.objects.get(id=first.id).holds_slots is False
    handed = Run.objects.get(id=second.id)
    assert (handed.status, handed.holds_slots) == (RunStatus.QUEUED, True)
    assert Slot.objects.get(key=KEY).in_use == 1
    assert durable.run_next() == second.id
    assert Slot.objects.get(key=KEY).in_use == 0


def test_completion__of_a_run_whose_slot_was_given_back_meanwhile__gives_nothing_back_twice(durable):
    anomalous = handover_two.delay(7, 1, simulate_backstop=True)
    durable.clock.advance(1)  # run_next takes the oldest queued run: the anomalous one
    other = handover_two.delay(7, 2)  # queued: it holds the key's other slot
    assert Slot.objects.get(key="t.handover_two:account:7").in_use == 2
    assert durable.run_next() == anomalous.id
    assert Run.objects.get(id=anomalous.id).status == RunStatus.COMPLETED
    # The other run's slot is still counted: the completion did not give a second one back.
    assert Slot.objects.get(key="t.handover_two:account:7").in_use == 1
    assert Run.objects.get(id=other.id).holds_slots is True


def test_completion__whose_hand_over_fails__rolls_back_and_completes_the_plain_way(durable, first_hand_over_fails):
    calls = first_hand_over_fails
    first, second = handover_one.delay(7, 1), handover_one.delay(7, 2)
    assert durable.run_next() == first.id
    finished = Run.objects.get(id=first.id)
    assert (finished.status, finished.holds_slots) == (RunStatus.COMPLETED, False)
    # The separate release after the completion handed the slot on: nothing leaked.
    assert len(calls) == 2
    assert Run.objects.get(id=second.id).status == RunStatus.QUEUED
    assert Slot.objects.get(key=KEY).in_use == 1
    assert durable.run_next() == second.id
    assert Slot.objects.get(key=KEY).in_use == 0


# --- the suspension with its slot release (sleep and wait_for_event) ---

SLEEP_KEY = "t.handover_sleeper:account:7"


@durable_task(name="t.handover_sleeper", concurrency=Concurrency(limit=1, key="account"))
def handover_sleeper(account, n):
    from celery_durable import step

    step.sleep("nap", 3600)
    return n


@durable_task(name="t.handover_sleeper_two", concurrency=Concurrency(limit=2, key="account"))
def handover_sleeper_two(account, n, simulate_backstop=False):
    from celery_durable import step

    if simulate_backstop:
        # As if the services' backstop had given this run's slot back meanwhile.
        Run.objects.filter(task_name="t.handover_sleeper_two", status=RunStatus.RUNNING).update(holds_slots=False)
        Slot.objects.filter(key="t.handover_sleeper_two:account:7").update(in_use=F("in_use") - 1)
    step.sleep("nap", 3600)
    return n


@durable_task(name="t.handover_waiter", concurrency=Concurrency(limit=1, key="account"))
def handover_waiter(account, n):
    from celery_durable import step

    return step.wait_for_event("go", "handover.go", timeout=3600).data["n"] + n


def test_sleep__leaves_running_and_hands_the_slot_on_in_its_own_transaction(durable):
    first, second = handover_sleeper.delay(7, 1), handover_sleeper.delay(7, 2)
    assert Run.objects.get(id=second.id).status == RunStatus.PENDING
    sql = statements(durable)
    # The run's UPDATE: a statement of its own, or on PostgreSQL the CTE before the step's INSERT.
    sleeps = [n for n, s in enumerate(sql) if s.startswith(("UPDATE", "WITH")) and "'sleeping'" in s]
    assert len(sleeps) == 1 and '"holds_slots" = ' in sql[sleeps[0]].replace("`", '"')
    # After the suspension (its run UPDATE, then its pending step), no statement reads or
    # writes the sleeping run again to release its slot (a second transaction did).
    step_insert = next(n for n in range(sleeps[0], len(sql)) if "celery_durable_step" in sql[n])
    assert not [s for s in sql[step_insert + 1 :] if first.id in s], sql[step_insert + 1 :]
    sleeper = Run.objects.get(id=first.id)
    assert (sleeper.status, sleeper.holds_slots) == (RunStatus.SLEEPING, False)
    handed = Run.objects.get(id=second.id)
    assert (handed.status, handed.holds_slots) == (RunStatus.QUEUED, True)
    assert Slot.objects.get(key=SLEEP_KEY).in_use == 1


def test_wait__leaves_running_and_hands_the_slot_on_in_its_own_transaction(durable):
    first, second = handover_waiter.delay(7, 1), handover_waiter.delay(7, 2)
    durable.run_next()
    waiter = Run.objects.get(id=first.id)
    assert (waiter.status, waiter.holds_slots) == (RunStatus.WAITING, False)
    assert Run.objects.get(id=second.id).holds_slots is True
    assert Slot.objects.get(key="t.handover_waiter:account:7").in_use == 1
    durable.run_until_idle(advance_clock=False)  # the second waits too, its slot handed back
    durable.send_event("handover.go", {"n": 10})
    durable.run_until_idle(advance_clock=False)
    assert [durable.result(first.id), durable.result(second.id)] == [11, 12]
    assert Slot.objects.get(key="t.handover_waiter:account:7").in_use == 0


def test_sleep__of_a_run_whose_slot_was_given_back_meanwhile__gives_nothing_back_twice(durable):
    key = "t.handover_sleeper_two:account:7"
    anomalous = handover_sleeper_two.delay(7, 1, simulate_backstop=True)
    durable.clock.advance(1)  # run_next takes the oldest queued run: the anomalous one
    other = handover_sleeper_two.delay(7, 2)  # queued: it holds the key's other slot
    assert Slot.objects.get(key=key).in_use == 2
    assert durable.run_next() == anomalous.id
    assert Run.objects.get(id=anomalous.id).status == RunStatus.SLEEPING
    # The other run's slot is still counted: the suspension did not give a second one back.
    assert Slot.objects.get(key=key).in_use == 1
    assert Run.objects.get(id=other.id).holds_slots is True


def test_sleep__whose_hand_over_fails__rolls_back_and_suspends_the_plain_way(durable, first_hand_over_fails):
    calls = first_hand_over_fails
    first, second = handover_sleeper.delay(7, 1), handover_sleeper.delay(7, 2)
    assert durable.run_next() == first.id
    sleeper = Run.objects.get(id=first.id)
    assert (sleeper.status, sleeper.holds_slots) == (RunStatus.SLEEPING, False)
    assert len(calls) == 2  # the separate release after the suspension handed the slot on
    assert Run.objects.get(id=second.id).status == RunStatus.QUEUED
    assert Slot.objects.get(key=SLEEP_KEY).in_use == 1


@durable_task(name="t.handover_k", concurrency=Concurrency(limit=1, scope="global", name="handover-k"))
def handover_k(n):
    return n


@durable_task(
    name="t.handover_jk",
    concurrency=[
        Concurrency(limit=1, scope="global", name="handover-j"),
        Concurrency(limit=1, scope="global", name="handover-k"),
    ],
)
def handover_jk(n):
    return n


def test_completion__does_not_hand_the_slot_past_an_older_run_that_needs_it_as_its_second_key(durable):
    holder = handover_k.delay(1)
    older = handover_jk.delay(2)  # waits for the shared key, which is its second one
    younger = handover_k.delay(3)  # the shared key is its first: the head of that backlog
    older_row, younger_row = Run.objects.get(id=older.id), Run.objects.get(id=younger.id)
    assert older_row.slot_key2 == younger_row.slot_key1 and older_row.slot_key1 != younger_row.slot_key1
    assert (older_row.status, younger_row.status) == (RunStatus.PENDING, RunStatus.PENDING)
    assert durable.run_next() == holder.id
    # The freed slot goes to the run first in line, which takes both of its keys at once.
    older_row, younger_row = Run.objects.get(id=older.id), Run.objects.get(id=younger.id)
    assert (older_row.status, older_row.holds_slots) == (RunStatus.QUEUED, True)
    assert (younger_row.status, younger_row.holds_slots) == (RunStatus.PENDING, False)
    assert durable.run_next() == older.id
    assert durable.run_next() == younger.id


@durable_task(name="t.handover_j", concurrency=Concurrency(limit=1, scope="global", name="handover-j"))
def handover_j(n):
    return n


def test_completion__does_not_hand_the_slot_to_a_head_whose_other_key_is_full(durable):
    holder_j = handover_j.delay(1)
    durable.clock.advance(1)  # run_next() executes the oldest queued run first
    holder_k = handover_k.delay(2)
    both = handover_jk.delay(3)  # the head of the freed key's backlog, and it needs the full key too
    row = Run.objects.get(id=both.id)
    assert (row.slot_key1, row.slot_key2, row.status) == ("handover-j:*", "handover-k:*", RunStatus.PENDING)
    assert durable.run_next() == holder_j.id
    # Its freed slot went back: the head cannot start on one of its two keys.
    assert (Run.objects.get(id=both.id).status, Run.objects.get(id=both.id).holds_slots) == (RunStatus.PENDING, False)
    assert dict(Slot.objects.filter(key__startswith="handover-").values_list("key", "in_use")) == {
        "handover-j:*": 0,
        "handover-k:*": 1,
    }
    assert durable.run_next() == holder_k.id  # the full key frees: the head takes both at once
    assert durable.run_next() == both.id
    assert dict(Slot.objects.filter(key__startswith="handover-").values_list("key", "in_use")) == {
        "handover-j:*": 0,
        "handover-k:*": 0,
    }


@pytest.mark.django_db(transaction=True)
def test_completion_handing_over__that_fails_inside_a_transaction__leaves_that_transaction_usable(durable):
    """PostgreSQL's one-statement completion, called in the caller's atomic block, fails on a lock.

    Its savepoint rolls back the statement alone: the caller's transaction goes on and commits
    its own writes, and the run is still running, its slot held, for a later completion.
    """
    if connection.vendor != "postgresql":
        pytest.skip("the completion and hand-over in one statement is PostgreSQL's")
    first, second = handover_one.delay(7, 1), handover_one.delay(7, 2)
    claim = claims.claim(first.id, "test-owner", 60)
    assert claim is not None
    locked, release = threading.Event(), threading.Event()

    def hold_the_run_row():
        with transaction.atomic():
            Run.objects.select_for_update().get(id=first.id)
            locked.set()
            assert release.wait(60)

    holder = threading.Thread(target=lambda: (hold_the_run_row(), connections.close_all()))
    holder.start()
    try:
        assert locked.wait(60)
        with transaction.atomic():
            Run.objects.filter(id=second.id).update(priority=5)  # the caller's own write
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '100ms'")
            with pytest.raises(OperationalError, match="lock timeout"):
                endings.complete_handing_over(first.id, claim.generation, "1", KEY)
            # Without the savepoint this statement fails: the transaction would be aborted.
            assert Run.objects.get(id=first.id).status == RunStatus.RUNNING
    finally:
        release.set()
        holder.join(60)
    assert Run.objects.get(id=second.id).priority == 5  # the caller's transaction committed
    held = Run.objects.get(id=first.id)
    assert (held.status, held.holds_slots, Slot.objects.get(key=KEY).in_use) == (RunStatus.RUNNING, True, 1)
    assert endings.complete_handing_over(first.id, claim.generation, "1", KEY)[0].run_id == second.id
