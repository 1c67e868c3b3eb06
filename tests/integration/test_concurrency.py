"""Per-key concurrency and priority, in-process on the real database."""

import pytest

from celery_durable import DurableConfigError, cancel, durable_task, get_run
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from tests.testapp import flows

HOLDING = (RunStatus.QUEUED, RunStatus.RUNNING)


def holding(task_name, **filters):
    return Run.objects.filter(task_name=task_name, status__in=HOLDING, holds_slots=True, **filters).count()


def drain(durable, check):
    """Execute run by run, checking the invariant after every execution and wake-up."""
    while True:
        check()
        if durable.run_next() is not None:
            continue
        if durable.wake_due():
            continue
        if not durable.run_until_idle(max_executions=1):
            check()
            return


def test_limit_one_per_key__backlog_runs_one_at_a_time_in_order(durable):
    a = [flows.per_user.delay(1) for _ in range(3)]
    b = flows.per_user.delay(2)
    assert [get_run(r.id).status for r in a] == ["queued", "pending", "pending"]
    assert get_run(b.id).status == "queued"  # other keys are not held up
    assert Slot.objects.get(key="f.per_user:user_id:1").in_use == 1

    def at_most_one_per_key():
        for user in (1, 2):
            assert Run.objects.filter(slot_key1=f"f.per_user:user_id:{user}", holds_slots=True).count() <= 1

    drain(durable, at_most_one_per_key)
    assert [durable.result(r.id) for r in a] == [1, 1, 1]
    from tests.testapp.models import BodyRun

    executed = list(BodyRun.objects.filter(step="work").order_by("id").values_list("run_id", flat=True))
    assert [run_id for run_id in executed if run_id != b.id] == [r.id for r in a]  # equal priorities: call order
    assert Slot.objects.get(key="f.per_user:user_id:1").in_use == 0


def test_priority__a_paid_run_jumps_the_backlog(durable):
    free = [flows.per_user.delay(1, "free") for _ in range(20)]
    paid = flows.per_user.delay(1, "paid")
    assert get_run(paid.id).status == "pending"
    durable.run_next()  # the first free run, admitted at once, finishes and hands its slot on
    assert get_run(paid.id).status == "queued"
    assert all(get_run(r.id).status == "pending" for r in free[1:])


def test_sleeping_runs__hold_no_slot(durable):
    first = flows.per_user_sleeps.delay(1, 1)
    second = flows.per_user_sleeps.delay(1, 2)
    assert get_run(second.id).status == "pending"
    durable.run_next()  # first starts, then sleeps: its slot goes to the second
    assert get_run(first.id).status == "sleeping"
    assert get_run(second.id).status == "queued"
    durable.run_until_idle()
    assert durable.result(first.id) == 1 and durable.result(second.id) == 2
    assert Slot.objects.get(key="f.per_user_sleeps:user_id:1").in_use == 0


def test_global_scope__one_limit_shared_by_two_tasks(durable):
    runs = [flows.quota_a.delay(1), flows.quota_b.delay(2), flows.quota_a.delay(3)]
    assert [get_run(r.id).status for r in runs] == ["queued", "queued", "pending"]
    durable.run_until_idle()
    assert [durable.result(r.id) for r in runs] == [1, 2, 3]


def test_two_concurrency_entries__both_limits_hold(durable):
    a = flows.two_limits.delay(1, "red")
    b = flows.two_limits.delay(2, "red")
    c = flows.two_limits.delay(3, "red")  # team "red" is full (2)
    d = flows.two_limits.delay(1, "blue")  # user 1 is busy
    assert [get_run(r.id).status for r in (a, b, c, d)] == ["queued", "queued", "pending", "pending"]
    durable.run_until_idle()
    assert [get_run(r.id).status for r in (a, b, c, d)] == ["completed"] * 4
    assert set(Slot.objects.values_list("in_use", flat=True)) == {0}


def test_cancel__of_a_backlogged_run_and_of_a_slot_holder(durable):
    holder = flows.per_user.delay(5)
    waiting = flows.per_user.delay(5)
    last = flows.per_user.delay(5)
    cancel(waiting.id)
    assert get_run(waiting.id).status == "cancelled"
    cancel(holder.id)  # gives its slot to the next run in line
    assert get_run(last.id).status == "queued"
    durable.run_until_idle()
    assert durable.result(last.id) == 5


def test_leaked_slot__is_returned_by_the_backstop(durable):
    from celery import current_app

    from celery_durable.integration.services import tick

    holder = flows.per_user.delay(9)
    waiting = flows.per_user.delay(9)
    # A crash between a run's transition and its release leaves the slot held.
    Run.objects.filter(id=holder.id).update(status=RunStatus.FAILED)
    assert tick(current_app).promoted == 1
    assert get_run(waiting.id).status == "queued"


def test_stranded_backlog__is_promoted_by_the_backstop_a_batch_of_keys_at_a_time(durable):
    from celery_durable.store import slots

    holders = [flows.per_user.delay(user) for user in (11, 12, 13)]
    waiting = [flows.per_user.delay(user) for user in (11, 12, 13)]
    assert {get_run(r.id).status for r in waiting} == {"pending"}
    # A release that raced the backlog's suspension: the slots came back, nobody was promoted.
    Run.objects.filter(id__in=[r.id for r in holders]).update(status=RunStatus.COMPLETED, holds_slots=False)
    Slot.objects.filter(key__in=[f"f.per_user:user_id:{user}" for user in (11, 12, 13)]).update(in_use=0)
    first = slots.promote_stranded(2)  # at most two keys per pass
    assert len(first) == 2
    rest = slots.promote_stranded(2)
    assert sorted(n.run_id for n in first + rest) == sorted(r.id for r in waiting)
    assert slots.promote_stranded(2) == []


def test_limit_change__takes_effect_on_deploy(durable):
    flows.per_user.delay(3)
    Slot.objects.filter(key="f.per_user:user_id:3").update(limit=5)  # as deployed before
    flows.per_user.delay(3)
    assert Slot.objects.get(key="f.per_user:user_id:3").limit == 1


def test_flow_control__works_for_a_task_with_no_steps(durable):
    runs = [flows.no_steps_limited.delay("acme") for _ in range(2)]
    assert get_run(runs[1].id).status == "pending"
    durable.run_until_idle()
    assert [durable.result(r.id) for r in runs] == ["acme", "acme"]


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"concurrency": object()}, "Concurrency"),
        ({"concurrency": [object()]}, "Concurrency"),
        ({"concurrency": []}, "Concurrency"),
        ({"concurrency": [__import__("celery_durable").Concurrency(limit=1, key="user_id")] * 2}, "same key"),
        ({"concurrency": __import__("celery_durable").Concurrency(limit=1, key="nope")}, "names no parameter"),
        ({"priority": 601}, "priority"),
        ({"priority": "high"}, "priority"),
    ],
)
def test_bad_concurrency_or_priority__fails_at_import(options, fragment):
    with pytest.raises(DurableConfigError, match=fragment):

        @durable_task(name="t.bad_concurrency", **options)
        def bad(user_id):
            return user_id


def test_priority_callable_out_of_range__fails_the_delay(durable):
    @durable_task(name="t.bad_priority", concurrency=flows.per_user.concurrency, priority=lambda user_id: 10_000)
    def bad_priority(user_id):
        return user_id

    with pytest.raises(DurableConfigError, match=r"t\.bad_priority"):
        bad_priority.delay(1)
    assert not Run.objects.filter(task_name="t.bad_priority").exists()


def test_run_recorded_without_intake__gives_its_slot_back(durable):
    from celery_durable.store import runs

    # What install(app) records for app.send_task(): no admission, so no concurrency keys.
    runs.create(run_id="sent-by-name", task_name="f.per_user", args="[6]", kwargs="{}", options="{}")
    holder = flows.per_user.delay(6)
    durable.run_until_idle()
    assert get_run("sent-by-name").status == "completed" and durable.result(holder.id) == 6
    assert Slot.objects.get(key="f.per_user:user_id:6").in_use == 0
    assert get_run(flows.per_user.delay(6).id).status == "queued"
