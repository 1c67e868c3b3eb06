"""Inline hand-off through Celery's own task tracer: the process that frees a slot runs the next run."""

import pytest
from celery import current_app
from celery.app.trace import build_tracer

from celery_durable import serialization
from celery_durable.models import Run, Slot
from celery_durable.states import RunStatus
from tests.testapp import flows
from tests.testapp.models import BodyRun


def deliver(task, run_id, timelimit=(None, None)):
    """What a worker process does with the run's message: Celery's tracer around the task.

    ``timelimit``: the message's ``(time_limit, soft_time_limit)``, as ``apply_async`` sends them.
    """
    run = Run.objects.get(id=run_id)
    tracer = build_tracer(task.name, task, eager=False, propagate=False, app=current_app)
    request = {
        "id": run_id,
        "delivery_info": {"exchange": "", "routing_key": "celery"},
        "headers": {},
        "timelimit": timelimit,
    }
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


# --- PostgreSQL: the completion claims the run it hands its slot to, for this process ------


def _postgres_only():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the completion and hand-over in one statement is PostgreSQL's")


def claims_and_hand_overs(queries):
    """The claim statements and the completions that hand a slot over, among captured queries."""
    claims = [q for q in queries if q["sql"].startswith(f'WITH c AS (UPDATE "{Run._meta.db_table}"')]
    hand_overs = [q for q in queries if "taken AS (UPDATE" in q["sql"]]
    return claims, hand_overs


def test_inline_hand_off__the_completion_claims_the_next_run__no_claim_of_its_own(durable, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _postgres_only()
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 10}
    backlog = [flows.per_user.delay(8) for _ in range(3)]
    durable.published.clear()
    with CaptureQueriesContext(connection) as captured:
        deliver(flows.per_user, backlog[0].id)
    claims, hand_overs = claims_and_hand_overs(captured.captured_queries)
    assert len(claims) == 1  # the delivered run's; the two inline runs were claimed by the completions before them
    assert len(hand_overs) == 3
    assert statuses(backlog) == ["completed"] * 3
    assert durable.published == []
    rows = Run.objects.filter(id__in=[r.id for r in backlog])
    assert {(r.generation, r.executions, r.lease_owner) for r in rows} == {(1, 1, None)}
    executed = list(BodyRun.objects.filter(step="work").order_by("id").values_list("run_id", flat=True))
    assert executed == [r.id for r in backlog]  # in backlog order, each once


def test_inline_hand_off__a_run_of_another_task_on_the_key__is_queued_and_published(durable, settings):
    _postgres_only()
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 10}
    mine = [flows.quota_a.delay(n) for n in range(2)]  # the global key's two slots
    theirs = flows.quota_b.delay(9)
    assert statuses([*mine, theirs]) == ["queued", "queued", "pending"]
    durable.published.clear()
    deliver(flows.quota_a, mine[0].id)
    # Not this task's: not claimed here, published for a worker of quota_b.
    assert statuses([*mine, theirs]) == ["completed", "queued", "queued"]
    assert [m.run_id for m in durable.published] == [theirs.id]
    assert Run.objects.get(id=theirs.id).generation == 0


def test_inline_hand_off__a_run_with_a_queue_of_its_own__is_queued_and_published(durable, settings):
    _postgres_only()
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 10}
    first = flows.per_user.delay(9)
    routed = flows.per_user.apply_async((9,), queue="gpu")
    durable.published.clear()
    deliver(flows.per_user, first.id)
    assert statuses([first, routed]) == ["completed", "queued"]
    assert [m.run_id for m in durable.published] == [routed.id]
    assert Run.objects.get(id=routed.id).generation == 0


def test_inline_hand_off__a_run_paused_meanwhile__is_not_claimed_and_waits_in_paused(durable, settings):
    from celery_durable import pause, signals

    _postgres_only()
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 10}
    first = flows.no_steps_limited.delay("acct")
    second = flows.no_steps_limited.delay("acct")

    def pause_the_task(sender=None, run_id=None, **kwargs):  # while the first run executes
        if run_id == first.id:
            pause("f.no_steps_limited", by="ops")

    signals.run_started.connect(pause_the_task, weak=False)
    try:
        deliver(flows.no_steps_limited, first.id)
    finally:
        signals.run_started.disconnect(pause_the_task)
    # The first completed (a pause stops a run at a step boundary); the second took the slot
    # but no execution: the pause holds it until resume.
    assert statuses([first, second]) == ["completed", "paused"]
    assert Run.objects.get(id=second.id).executions == 0


def test_execution_without_a_worker_delivery__does_not_claim_the_next_run(durable, settings):
    """``celery_durable.testing`` executes runs with no delivery: their hand-overs publish, as before."""
    _postgres_only()
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 10}
    backlog = [flows.per_user.delay(5) for _ in range(3)]
    durable.published.clear()
    assert durable.run_next() == backlog[0].id
    assert statuses(backlog) == ["completed", "queued", "pending"]
    assert [m.run_id for m in durable.published] == [backlog[1].id]
    assert durable.run_until_idle() == 2
    assert statuses(backlog) == ["completed"] * 3


@pytest.mark.parametrize("limit", ["message hard", "message soft", "task hard", "task soft"])
def test_under_a_celery_time_limit__the_promoted_run_is_published__not_run_here(durable, settings, limit):
    """Celery times the delivery: runs executed inline would spend the delivered run's limit."""
    settings.CELERY_DURABLE = {"INLINE_HANDOFF_RUNS": 10}
    backlog = [flows.per_user.delay(9) for _ in range(3)]
    durable.published.clear()
    where, kind = limit.split()
    timelimit = ((30, None) if kind == "hard" else (None, 30)) if where == "message" else (None, None)
    attribute = "time_limit" if kind == "hard" else "soft_time_limit"
    if where == "task":  # what Celery's `time_limit` remote control or task_time_limit sets
        setattr(flows.per_user, attribute, 30)
    try:
        deliver(flows.per_user, backlog[0].id, timelimit)
    finally:
        setattr(flows.per_user, attribute, None)
    assert statuses(backlog) == ["completed", "queued", "pending"]
    assert [m.run_id for m in durable.published] == [backlog[1].id]
    run = Run.objects.get(id=backlog[1].id)
    assert (run.executions, run.lease_owner) == (0, None)  # not claimed by the completion either
