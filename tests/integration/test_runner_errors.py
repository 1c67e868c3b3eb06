"""DurableTestRunner: a run's own recorded failure stays on the run; any other error propagates.

A step's error that the run records (failed, or retried later) and a cancellation are the
run's outcome: ``run_next`` returns and ``result()`` raises them. An exception that the run did
not record (the library's machinery, or anything raised after the run's transition) must
reach the test.
"""

import pytest

from celery_durable import Concurrency, NonRetriableError, cancel, durable_task, step
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus
from celery_durable.testing import DurableTestRunner, RunNotFinished
from tests.testapp import tasks

KEY_LOOKUP_FAILS = {"now": False}


def user_key(user_id, fail=False):
    if KEY_LOOKUP_FAILS["now"]:
        raise LookupError("user directory unavailable")
    return user_id


@durable_task(name="t.runner_keyed", concurrency=Concurrency(limit=1, key=user_key))
def keyed(user_id, fail=False):
    def work():
        if fail:
            raise NonRetriableError(f"user {user_id} rejected")
        return user_id * 2

    return step.run("work", work)


@durable_task(name="t.runner_cancels_itself")
def cancels_itself():
    step.run("ask", lambda: cancel(step.run_id, "changed my mind") and None)
    return step.run("never", lambda: "reached")


class BrokerDown(list):
    """The runner's stand-in for the broker, failing as a crashing publisher would."""

    def append(self, nudge):
        raise ConnectionError(f"broker down: cannot publish run {nudge.run_id}")


@pytest.fixture(autouse=True)
def key_lookup_works():
    KEY_LOOKUP_FAILS["now"] = False
    yield
    KEY_LOOKUP_FAILS["now"] = False


def status(run_id):
    return Run.objects.get(id=run_id).status


# --- library errors propagate ---------------------------------------------------------------


def test_a_run_holding_its_slot__executes_without_computing_its_key_again(durable):
    run = keyed.delay(3)  # admitted: the key function worked then, and the run holds its slot
    KEY_LOOKUP_FAILS["now"] = True
    durable.run_until_idle()
    assert durable.result(run.id) == 6


@durable_task(name="t.runner_keyed_sleeps", concurrency=Concurrency(limit=1, key=user_key))
def keyed_sleeps(user_id):
    step.sleep("nap", 60)
    return step.run("work", lambda: user_id)


def test_a_resumed_run_whose_key_function_raises__fails_as_a_run_and_is_not_retried(durable):
    # Issue 13 #6: the run used to stay queued (its message republished for ever) while the
    # result backend said FAILURE. It now fails as a run; nothing is left to republish.
    run = keyed_sleeps.delay(4)
    durable.run_next()  # sleeps: its slot is given back
    assert status(run.id) == RunStatus.SLEEPING
    KEY_LOOKUP_FAILS["now"] = True
    durable.run_until_idle()
    row = Run.objects.get(id=run.id)
    assert row.status == RunStatus.FAILED
    assert (row.error_value["type"], row.holds_slots) == ("DurableConfigError", False)
    assert "user directory unavailable" in row.error_value["message"]
    assert not Step.objects.filter(run_id=run.id, step_id="work").exists()
    with pytest.raises(RunNotFinished):
        durable.result(run.id)


@pytest.mark.django_db
def test_library_error_after_completion__propagates_although_the_run_completed():
    with DurableTestRunner(published=BrokerDown()) as runner:
        first = keyed.delay(7)
        second = keyed.delay(7)  # the same key, limit 1: in the backlog behind the first
        assert status(second.id) == RunStatus.PENDING
        with pytest.raises(ConnectionError, match=f"cannot publish run {second.id}") as raised:
            runner.run_next()  # completes the first, promotes the second, publishing it fails
        assert any(first.id in note for note in raised.value.__notes__)
        assert status(first.id) == RunStatus.COMPLETED
        assert runner.result(first.id) == 14
        assert status(second.id) == RunStatus.QUEUED


@pytest.mark.django_db
def test_library_error_after_a_recorded_failure__propagates_instead_of_the_runs_error():
    with DurableTestRunner(published=BrokerDown()) as runner:
        first = keyed.delay(8, fail=True)
        second = keyed.delay(8)
        with pytest.raises(ConnectionError, match=f"cannot publish run {second.id}"):
            runner.run_next()
        row = Run.objects.get(id=first.id)
        assert row.status == RunStatus.FAILED
        assert row.error_value["type"] == "NonRetriableError"  # recorded, yet not what was raised


# --- the run's own outcome stays on the run -------------------------------------------------


def test_user_error__is_recorded_on_the_run_not_raised(durable):
    run = tasks.non_retriable.delay()
    assert durable.run_next() == run.id
    row = Run.objects.get(id=run.id)
    assert row.status == RunStatus.FAILED
    assert (row.error_value["type"], row.error_value["message"]) == ("NonRetriableError", "card declined")
    with pytest.raises(RunNotFinished, match="card declined"):
        durable.result(run.id)


def test_user_error__retried_then_recorded_when_retries_run_out(durable):
    run = tasks.flaky.delay(5)  # retries=2: three attempts, all fail
    assert durable.run_next() == run.id  # attempt 1 fails: retried later, not raised
    assert status(run.id) == RunStatus.QUEUED
    durable.run_until_idle()
    row = Run.objects.get(id=run.id)
    assert row.status == RunStatus.FAILED
    assert (row.error_value["type"], row.error_value["message"]) == ("ValueError", "failure 3")
    assert durable.history(run.id) == [("before", "completed", 1), ("flaky", "failed", 3)]


def test_user_error_outside_any_step__is_recorded_not_raised(durable):
    run = tasks.outside_error.delay()
    assert durable.run_next() == run.id
    assert status(run.id) == RunStatus.FAILED


def test_injected_step_failure__is_recorded_not_raised(durable):
    durable.fail_step("t.three_steps", "two", NonRetriableError("injected"))
    run = tasks.three_steps.delay(1)
    assert durable.run_until_idle() == 1
    assert Run.objects.get(id=run.id).error_value["message"] == "injected"


def test_cancellation_during_execution__is_recorded_not_raised(durable):
    run = cancels_itself.delay()
    assert durable.run_next() == run.id
    row = Run.objects.get(id=run.id)
    assert (row.status, row.cancel_reason) == (RunStatus.CANCELLED, "changed my mind")
    assert not Step.objects.filter(run_id=run.id, step_id="never").exists()
