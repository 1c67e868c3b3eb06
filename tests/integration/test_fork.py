"""``celery_durable.fork``: a new run reusing the original's checkpoints before ``from_step``."""

import pytest

from celery_durable import RunNotFound, SerializationError, fork, get_run
from celery_durable.exceptions import DurableConfigError, StepNotFound
from celery_durable.models import Run, Step
from tests.testapp import tasks
from tests.testapp.models import BodyRun


def _bodies(run_id):
    return {s: BodyRun.objects.filter(run_id=run_id, step=s).count() for s in ("one", "two", "three")}


def _steps(run_id):
    return list(Step.objects.filter(run_id=run_id).order_by("id").values_list("step_id", "status", "output"))


def test_fork__from_the_middle_step_reuses_the_first_checkpoints(durable):
    original = tasks.three_steps.delay(1)
    durable.run_until_idle()
    before = _steps(original.id)
    forked = fork(original.id, from_step="two")
    assert forked.id != original.id
    assert forked.forked_from_id == original.id and forked.forked_at_step == "two"
    assert forked.task_name == "t.three_steps" and forked.args_value == [1]
    # Copied before the fork could run: only the checkpoint of "one".
    assert [s[0] for s in _steps(forked.id)] == ["one"]
    durable.run_until_idle()
    assert durable.result(forked.id) == 7
    assert _bodies(forked.id) == {"one": 0, "two": 1, "three": 1}
    # The original is untouched.
    assert _steps(original.id) == before
    assert get_run(original.id).status == "completed" and _bodies(original.id) == {"one": 1, "two": 1, "three": 1}


def test_fork__with_new_arguments(durable):
    original = tasks.three_steps.delay(1)
    durable.run_until_idle()
    forked = fork(original.id, from_step="two", args=[10])
    durable.run_until_idle()
    # "one" is reused (2, from n=1); "two" and "three" run again: (2 * 2) + 3.
    assert durable.result(forked.id) == 7
    assert get_run(forked.id).args_value == [10]
    fresh = fork(original.id, from_step="one", args=[10])
    durable.run_until_idle()
    assert durable.result(fresh.id) == 25  # nothing reused: (11 * 2) + 3
    assert _bodies(fresh.id) == {"one": 1, "two": 1, "three": 1}


def test_fork__without_from_step_reuses_every_completed_checkpoint(durable):
    durable.fail_step("t.three_steps", "three", Exception("down"), times=4)
    original = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert get_run(original.id).status == "failed"
    forked = fork(original.id)
    # The failed step is not copied: the fork resumes at it.
    assert [s[:2] for s in _steps(forked.id)] == [("one", "completed"), ("two", "completed")]
    durable.run_until_idle()
    assert durable.result(forked.id) == 7
    assert _bodies(forked.id) == {"one": 0, "two": 0, "three": 1}
    assert get_run(original.id).status == "failed"
    assert list(get_run(original.id).forks.values_list("id", flat=True)) == [forked.id]


def test_fork__of_a_sleeping_run_copies_only_completed_steps(durable):
    original = tasks.fork_flow.delay(1)
    durable.run_until_idle(advance_clock=False)
    assert get_run(original.id).status == "sleeping"
    forked = fork(original.id)
    assert [s[:2] for s in _steps(forked.id)] == [("one", "completed")]  # the pending sleep is not copied
    assert get_run(original.id).status == "sleeping"
    durable.run_until_idle()
    assert durable.result(forked.id) == 20 and durable.result(original.id) == 20
    assert BodyRun.objects.filter(run_id=forked.id, step="one").count() == 0


def test_fork__reuses_completed_sleep_and_child_checkpoints(durable):
    original = tasks.fork_flow.delay(1)
    durable.run_until_idle()
    assert durable.result(original.id) == 20
    forked = fork(original.id, from_step="last")
    assert [s[0] for s in _steps(forked.id)] == ["one", "nap", "child"]
    durable.run_until_idle(advance_clock=False)  # a copied sleep is done: no clock needed
    assert durable.result(forked.id) == 20
    assert not Run.objects.filter(parent_id=forked.id).exists()  # the child's result came from the copy
    assert BodyRun.objects.filter(run_id=forked.id).count() == 1  # only "last" ran


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda rid: fork("no-such-run"), RunNotFound),
        (lambda rid: fork(rid, from_step="nope"), StepNotFound),
        (lambda rid: fork(rid, args=[object()]), SerializationError),
        (lambda rid: fork(rid, args=[], kwargs={"n": {1, 2}}), SerializationError),
        (lambda rid: fork(rid, args=[1, 2]), TypeError),  # does not bind to the task's signature
        (lambda rid: fork(rid, args="1"), DurableConfigError),
        (lambda rid: fork(rid, kwargs=[1]), DurableConfigError),
    ],
)
def test_fork__bad_input_is_refused_and_writes_nothing(durable, call, error):
    original = tasks.three_steps.delay(1)
    durable.run_until_idle()
    runs, steps = Run.objects.count(), Step.objects.count()
    with pytest.raises(error):
        call(original.id)
    assert (Run.objects.count(), Step.objects.count()) == (runs, steps)


def test_fork__goes_through_the_tasks_flow_control(durable):
    from tests.testapp import flows

    done = flows.per_user.delay(7)
    durable.run_until_idle()
    holder = flows.per_user.delay(7)  # queued: it holds user 7's only slot
    forked = fork(done.id)
    assert forked.status == "pending"  # in the key's backlog, like any call
    assert [s[0] for s in _steps(forked.id)] == ["work"]
    durable.run_until_idle()
    assert durable.result(holder.id) == 7 and durable.result(forked.id) == 7
    assert BodyRun.objects.filter(run_id=forked.id).count() == 0  # "work" was reused


def test_fork__of_an_idempotent_run_returns_the_run_holding_the_key(durable):
    from tests.testapp import flows

    original = flows.idempotent.delay(17)
    durable.run_until_idle()
    before = _steps(original.id)
    assert fork(original.id).id == original.id  # the key is held for 24 h: no new run
    assert Run.objects.count() == 1 and _steps(original.id) == before
