"""Inline hand-off through Celery's own task tracer: the process that frees a slot runs the next run."""

import pytest
from celery import current_app
from celery.app.trace import build_tracer

from celery_durable import serialization
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from tests.testapp import flows
from tests.testapp.models import BodyRun


def deliver(task, run_id):
    """What a worker process does with the run's message: Celery's tracer around the task."""
    run = Run.objects.get(id=run_id)
    tracer = build_tracer(task.name, task, eager=False, propagate=False, app=current_app)
    request = {"id": run_id, "delivery_info": {"exchange": "", "routing_key": "celery"}, "headers": {}}
    return tracer(run_id, serialization.loads(run.args), serialization.loads(run.kwargs), request)


def statuses(results):
    return [Run.objects.get(id=r.id).status for r in results]


@pytest.mark.parametrize("budget, completed", [(10, 4), (2, 3), (0, 1)])
def test_freed_slot__runs_the_next_runs_here_up_to_the_budget(durable, settings, budget, completed):
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": budget}
    backlog = [flows.per_user.delay(7) for _ in range(4)]
    assert statuses(backlog) == ["queued", "pending", "pending", "pending"]
    durable.published.clear()
    deliver(flows.per_user, backlog[0].id)
    assert statuses(backlog)[:completed] == ["completed"] * completed
    assert statuses(backlog)[completed:] == (["queued"] + ["pending"] * (3 - completed))[: 4 - completed]
    # Only the run after the inline ones went to the broker; the others never left this process.
    assert [n.run_id for n in durable.published] == [r.id for r in backlog[completed : completed + 1]]
    executed = list(BodyRun.objects.filter(step="work").order_by("id").values_list("run_id", flat=True))
    assert executed == [r.id for r in backlog[:completed]]  # in backlog order, each once
    for result in backlog[:completed]:  # the result backend heard of every inline run
        assert current_app.AsyncResult(result.id).state == "SUCCESS"
    assert Slot.objects.get(key="f.per_user:user_id:7").in_use == (1 if completed < 4 else 0)


def test_runs_of_other_tasks_or_with_a_queue_of_their_own__are_published(durable, settings):
    from celery_durable.integration.handoff import eligible
    from celery_durable.store.messages import RunMessage

    assert eligible(flows.per_user, RunMessage("a", "f.per_user", "[]", "{}", "{}"))
    assert not eligible(flows.per_user, RunMessage("b", "f.other", "[]", "{}", "{}"))
    assert not eligible(flows.per_user, RunMessage("c", "f.per_user", "[]", "{}", '{"queue": "gpu"}'))


def test_a_promoted_run_that_suspends__hands_on_at_once(durable, settings):
    first = flows.per_user_sleeps.delay(3, 1)
    second = flows.per_user_sleeps.delay(3, 2)
    third = flows.per_user_sleeps.delay(3, 3)
    deliver(flows.per_user_sleeps, first.id)  # sleeps: its slot goes to the second, published now
    assert statuses([first, second, third]) == [RunStatus.SLEEPING, RunStatus.QUEUED, RunStatus.PENDING]
    assert [n.run_id for n in durable.published][-1] == second.id
