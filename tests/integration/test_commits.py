"""Issue 14: a run of n steps commits n + 2 write transactions.

Intake, claim, one per step but the last, and the last step's checkpoint with the
completion. A step's checkpoint is deferred to the next step boundary; the tests at the end
pin where it must be written all the same. The tests run without a wrapping transaction (``transaction=True``), so what
is counted is what the database commits: each write statement outside an atomic block,
and each outermost atomic block that writes to the library's tables.
"""

import pytest
from django.db import connection

from celery_durable import Concurrency, cancel, durable_task, get_run, step
from celery_durable.models import Run, Slot, Step
from celery_durable.states import RunStatus
from tests.testapp import tasks
from tests.testapp.models import BodyRun
from tests.testapp.tasks import counted

pytestmark = pytest.mark.django_db(transaction=True)

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class WriteTransactions:
    """An ``execute_wrapper`` that collects the transactions writing to celery_durable's tables."""

    def __init__(self):
        self.transactions = []  # the SQL (and parameters) of each, in order
        self._block = None  # the outermost atomic block of the last write (kept alive: compared by identity)

    def __call__(self, execute, sql, params, many, context):
        conn = context["connection"]
        kind = sql.lstrip().split()[0].upper()
        writes = kind in WRITES or (kind == "WITH" and any(f"{w} " in sql for w in WRITES))  # writable CTEs
        if writes and "celery_durable_" in sql:
            block = conn.atomic_blocks[0] if conn.in_atomic_block else None
            if block is None or block is not self._block:
                self.transactions.append([])
            self.transactions[-1].append(f"{sql} -- {params}")
            self._block = block
        else:
            self._block = self._block if conn.in_atomic_block else None
        return execute(sql, params, many, context)


def commits(action):
    counter = WriteTransactions()
    with connection.execute_wrapper(counter):
        action()
    return counter.transactions


@durable_task(name="t.commits_limited", concurrency=Concurrency(limit=1, key="account"))
def limited_two_steps(account, n):
    a = step.run("one", lambda: n + 1)
    return step.run("two", lambda: a * 2)


@durable_task(name="t.commits_limited_backstop", concurrency=Concurrency(limit=2, key="account"))
def limited_backstop(account, n):
    """A limited run whose slot the services' backstop gives back while its last step runs."""

    def backstop():
        Run.objects.filter(task_name="t.commits_limited_backstop", status=RunStatus.RUNNING).update(holds_slots=False)
        Slot.objects.filter(key="t.commits_limited_backstop:account:7").update(in_use=0)
        return n

    return step.run("last", backstop)


@durable_task(name="t.commits_nap")
def nap_then_step():
    step.sleep("nap", 60)
    return step.run("after", lambda: "rested")


def test_run_of_three_steps__commits_five_write_transactions(durable):
    holder = []
    intake = commits(lambda: holder.append(tasks.three_steps.delay(1)))
    execution = commits(durable.run_next)
    assert durable.result(holder[0].id) == 7
    assert len(intake) == 1, intake
    # claim; "one" (flushed at step two's boundary); "two" (at step three's); "three" with the completion
    assert len(execution) == 4, execution
    last = " ".join(execution[-1])  # two statements, or one on PostgreSQL (a writable CTE)
    assert "INSERT INTO" in last and "'three'" in last and "'completed'" in last, last
    assert Step.objects.filter(run_id=holder[0].id, status="completed").count() == 3
    assert BodyRun.objects.filter(run_id=holder[0].id).count() == 3  # each body ran once


def test_run_without_steps__completes_in_one_statement(durable):
    run = tasks.no_steps.delay(5)
    execution = commits(durable.run_next)
    assert durable.result(run.id) == {"x": 5}
    assert [len(t) for t in execution] == [1, 1], execution  # the claim, the completion


def test_resumed_sleep__completes_its_sleep_step_with_the_next_boundary(durable):
    run = nap_then_step.delay()
    first = commits(durable.run_next)
    assert Run.objects.get(id=run.id).status == RunStatus.SLEEPING
    assert len(first) == 2, first  # claim; the suspension (run and pending step)
    durable.clock.advance(61)
    assert durable.wake_due() == 1
    second = commits(durable.run_next)
    assert durable.result(run.id) == "rested"
    # claim; the sleep step's completion (replayable: it waits for the next write that cannot),
    # "after" and the run's completion, together
    assert len(second) == 2, second
    assert "'nap'" in " ".join(second[-1]) and "'after'" in " ".join(second[-1]), second[-1]
    assert set(Step.objects.filter(run_id=run.id).values_list("step_id", "status")) == {
        ("nap", "completed"),
        ("after", "completed"),
    }


def test_limited_run__writes_its_last_checkpoint_with_the_completion_and_the_hand_over(durable):
    first, second = limited_two_steps.delay(7, 1), limited_two_steps.delay(7, 2)
    assert Run.objects.get(id=second.id).status == RunStatus.PENDING
    execution = commits(durable.run_next)
    assert durable.result(first.id) == 4
    last = " ".join(execution[-1])
    assert "INSERT INTO" in last and "celery_durable_step" in last, last
    assert "'two'" in last and "'completed'" in last, last
    assert "'t.commits_limited:account:7'" in last, last  # the slot handed on to the next run, same transaction
    assert len(execution) == 3, execution  # claim; "one"; "two" with the completion and the hand-over
    assert Run.objects.get(id=second.id).status == RunStatus.QUEUED
    assert Slot.objects.get(key="t.commits_limited:account:7").in_use == 1


def test_limited_run_whose_slot_was_given_back_meanwhile__writes_its_last_checkpoint_once(durable):
    """The releasing completion writes nothing (the run holds no slot any more) and rolls back the
    checkpoint it wrote first; the plain completion writes it again. Without that rollback the
    second write collides with the first and the run is never completed."""
    run = limited_backstop.delay(7, 3)
    durable.run_next()
    assert durable.result(run.id) == 3
    assert list(Step.objects.filter(run_id=run.id).values_list("step_id", "status")) == [("last", "completed")]


# --- where a deferred checkpoint is written all the same ---


@durable_task(name="t.commits_fails_after_a_step")
def fails_after_a_step():
    step.run("one", counted, "one", 1)
    raise ValueError("the body fails outside any step")


@durable_task(name="t.commits_unstorable_result")
def unstorable_result():
    step.run("one", counted, "one", 1)
    return object()


@durable_task(name="t.commits_cancels_itself")
def cancels_itself():
    step.run("one", lambda: cancel(step.run_id) and None)
    step.run("two", counted, "two")  # the boundary before it writes "one", refused: the run stops
    return "not reached"


@durable_task(name="t.commits_atomic_then_look")
def atomic_then_look():
    step.run("write", counted, "write", atomic=True)
    # Outside any step, right after the atomic step's transaction: is its checkpoint there?
    return Step.objects.filter(run_id=step.run_id, step_id="write").exists()


def test_atomic_step__its_checkpoint_commits_with_its_body_not_at_the_next_boundary(durable):
    run = atomic_then_look.delay()
    durable.run_next()
    assert durable.result(run.id) is True


@durable_task(name="t.commits_two_naps")
def two_naps():
    step.sleep("a", 60)
    step.sleep("b", 60)
    return "rested twice"


def test_run_that_sleeps_again__records_its_first_sleep_completed_before_the_second(durable):
    run = two_naps.delay()
    durable.run_next()
    durable.clock.advance(61)
    durable.wake_due()
    durable.run_next()  # completes "a" (replayable: deferred), then suspends in "b"
    assert Run.objects.get(id=run.id).status == RunStatus.SLEEPING
    assert dict(Step.objects.filter(run_id=run.id).values_list("step_id", "status")) == {
        "a": "completed",
        "b": "pending",
    }
    durable.run_until_idle()
    assert durable.result(run.id) == "rested twice"


def test_body_failing_after_a_step__records_the_step_before_the_failure(durable):
    run = fails_after_a_step.delay()
    durable.run_next()
    assert get_run(run.id).status == RunStatus.FAILED
    assert list(Step.objects.filter(run_id=run.id).values_list("step_id", "status")) == [("one", "completed")]


def test_unstorable_result__records_the_step_before_the_failure(durable):
    run = unstorable_result.delay()
    durable.run_next()
    assert get_run(run.id).status == RunStatus.FAILED
    assert list(Step.objects.filter(run_id=run.id).values_list("step_id", "status")) == [("one", "completed")]


def test_cancel_during_a_step__stops_the_run_at_the_next_boundary_before_the_next_body(durable):
    run = cancels_itself.delay()
    durable.run_next()
    assert get_run(run.id).status == RunStatus.CANCELLED
    assert BodyRun.objects.filter(run_id=run.id, step="two").count() == 0
    assert Step.objects.filter(run_id=run.id).count() == 0  # the refused checkpoint of "one"
