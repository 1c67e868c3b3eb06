"""``durable_prune`` never deletes what an unfinished run still needs (issue 13, findings 1 and 2)."""

from datetime import timedelta

from celery_durable import NonRetriableError, control, durable_task, replay, step
from celery_durable.models import Run, RunStatus, Step
from tests.testapp import tasks
from tests.testapp.models import BodyRun


@durable_task(name="ps.fan")
def fan():
    return step.gather("fan", [tasks.add.s(1, 1), tasks.add.s(2, 2)])


def test_prune__keeps_a_finished_child_while_its_parent_waits_in_gather(durable):
    run = fan.delay()
    durable.run_next()  # the parent starts both children and waits in step.gather
    first = durable.run_next()  # one child finishes; the other is still queued
    assert Run.objects.get(id=first).status == RunStatus.COMPLETED
    assert Run.objects.get(id=run.id).status == RunStatus.WAITING
    later = durable.clock.now() + timedelta(days=60)

    assert control.prune(timedelta(days=30), now=later) == 0
    assert control.prune(timedelta(days=30), now=later, dry_run=True) == 0
    assert Run.objects.filter(id=first).exists()
    assert Step.objects.filter(run_id=first).exists()

    durable.run_until_idle()
    assert durable.result(run.id) == [2, 4]  # not a shorter, shifted list
    # Once the parent finished, its children go with it.
    assert control.prune(timedelta(days=30), now=durable.clock.now() + timedelta(days=60)) == 3


def test_prune__a_replay_between_read_and_delete_keeps_its_checkpoints(durable):
    durable.fail_step("t.three_steps", "three", NonRetriableError("declined"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED
    later = durable.clock.now() + timedelta(days=60)

    ids = control.next_batch(control.prunable(timedelta(days=30), now=later), 10)  # prune reads the batch
    assert ids == [run.id]
    replay(run.id)  # a replay commits before prune deletes
    assert control.delete_batch(ids, timedelta(days=30), now=later) == 0

    assert set(Step.objects.filter(run_id=run.id).values_list("step_id", flat=True)) == {"one", "two"}
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    # The completed steps were not run again: one body run each for "one" and "two".
    assert sorted(BodyRun.objects.filter(run_id=run.id).values_list("step", flat=True)) == [
        "one",
        "three",
        "two",
    ]
