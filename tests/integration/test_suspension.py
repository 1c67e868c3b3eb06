"""Sleeps, events, child runs, cancellation and timeouts, driven in-process on a fake clock."""

from datetime import timedelta

import pytest

from celery_durable import (
    DurableConfigError,
    RunNotFound,
    SerializationError,
    cancel,
    durable_task,
    get_run,
    send_event,
    step,
)
from celery_durable.exceptions import RunStateError
from celery_durable.models import Event, Run, Step
from celery_durable.states import RunStatus, StepStatus
from tests.testapp import flows
from tests.testapp.models import BodyRun


def bodies(run_id, name):
    return BodyRun.objects.filter(run_id=run_id, step=name).count()


def test_sleep__suspends_then_resumes_without_rerunning_steps(durable):
    run = flows.sleepy.delay(3600)
    durable.run_until_idle(advance_clock=False)
    record = get_run(run.id)
    assert record.status == RunStatus.SLEEPING
    assert record.lease_owner is None  # no worker holds it
    assert record.wake_at == durable.clock.now() + timedelta(seconds=3600)
    durable.clock.advance(3599)
    assert durable.run_until_idle(advance_clock=False) == 0  # never early
    durable.clock.advance(1)
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == 2
    assert (bodies(run.id, "before"), bodies(run.id, "after")) == (1, 1)
    assert durable.history(run.id) == [("before", "completed", 1), ("nap", "completed", 1), ("after", "completed", 1)]


def test_multi_day_dunning_flow__runs_in_one_test_on_the_fake_clock(durable):
    start = durable.clock.now()
    run = flows.dunning.delay(42)
    durable.run_until_idle()
    assert durable.result(run.id) == "paid"
    assert durable.clock.now() - start >= timedelta(days=4)
    assert bodies(run.id, "charge") == 3
    from celery_durable.models import Event

    (receipt,) = Event.objects.filter(name="invoice.paid")  # sent exactly once
    assert receipt.data_value == {"invoice_id": 42}
    assert receipt.event_id == f"{run.id}:paid"


@pytest.mark.parametrize("bad", [-1, timedelta(seconds=-5), "10", None])
def test_bad_sleep_duration__is_a_config_error(durable, bad):
    from celery_durable.options import RetryPolicy
    from celery_durable.runtime.context import activate, deactivate
    from celery_durable.runtime.memory import ephemeral_context

    token = activate(ephemeral_context("t", RetryPolicy()))
    try:
        with pytest.raises(DurableConfigError):
            from celery_durable import step

            step.sleep("x", bad)
    finally:
        deactivate(token)


def test_naive_sleep_until__is_a_config_error():
    from datetime import datetime

    from celery_durable import step
    from celery_durable.options import RetryPolicy
    from celery_durable.runtime.context import activate, deactivate
    from celery_durable.runtime.memory import ephemeral_context

    token = activate(ephemeral_context("t", RetryPolicy()))
    try:
        with pytest.raises(DurableConfigError, match="aware"):
            step.sleep_until("x", datetime(2030, 1, 1))
    finally:
        deactivate(token)


def test_wait__resumes_only_the_matching_run(durable):
    alice = flows.confirm.delay(1)
    bob = flows.confirm.delay(2)
    durable.run_until_idle(advance_clock=False)
    assert get_run(alice.id).status == get_run(bob.id).status == RunStatus.WAITING
    send_event("user.confirmed", {"user_id": 2})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(bob.id) == 2
    assert get_run(alice.id).status == RunStatus.WAITING


def test_event_sent_before_the_wait_is_reached__is_not_lost(durable):
    run = flows.confirm.delay(7)  # queued, not yet executed
    send_event("user.confirmed", {"user_id": 7})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == 7


def test_event_sent_before_the_run_started__does_not_count(durable):
    send_event("user.confirmed", {"user_id": 8})
    durable.clock.advance(1)
    run = flows.confirm.delay(8, 60)
    durable.run_until_idle()
    assert durable.result(run.id) == "expired"


def test_wait_timeout__returns_none(durable):
    run = flows.confirm.delay(3, 60)
    durable.run_until_idle()
    assert durable.result(run.id) == "expired"


def test_each_event__is_consumed_by_one_wait_of_a_run(durable):
    run = flows.two_waits.delay()
    send_event("tick", {"n": 1})
    durable.run_until_idle(advance_clock=False)
    assert get_run(run.id).status == RunStatus.WAITING
    send_event("tick", {"n": 2})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == [1, 2]


def test_duplicate_event_id__does_nothing_twice(durable):
    run = flows.two_waits.delay()
    first = send_event("tick", {"n": 1}, id="evt-1")
    again = send_event("tick", {"n": 99}, id="evt-1")
    assert again.data == {"n": 1} and again.id == first.id == "evt-1"
    durable.run_until_idle(advance_clock=False)
    assert get_run(run.id).status == RunStatus.WAITING  # only one event exists
    from celery_durable.models import Event

    assert Event.objects.filter(name="tick").count() == 1


def test_event_id__can_be_reused_after_the_window(durable):
    send_event("tick", {"n": 1}, id="evt-2")
    durable.clock.advance(timedelta(hours=25))
    assert send_event("tick", {"n": 2}, id="evt-2").data == {"n": 2}


@pytest.mark.parametrize(
    "call",
    [
        lambda: send_event("", {}),
        lambda: send_event("x", ["not", "a", "dict"]),
        lambda: send_event("x", {}, id=""),
    ],
)
def test_bad_event__is_a_config_error_and_stores_nothing(durable, call):
    from celery_durable.models import Event

    with pytest.raises(DurableConfigError):
        call()
    assert Event.objects.count() == 0


def test_unserializable_event_data__is_a_serialization_error(durable):
    from celery_durable.models import Event

    with pytest.raises(SerializationError):
        send_event("x", {"when": object()})
    assert Event.objects.count() == 0


def test_on_event_task__starts_with_the_event(durable):
    send_event("user.signed_up", {"email": "a@example.com"})
    durable.run_until_idle()
    run = Run.objects.get(task_name="f.on_signup")
    assert durable.result(run.id) == "a@example.com"


def test_invoke_and_gather__durable_and_plain_children_in_order(durable):
    run = flows.parent.delay(5)
    durable.run_until_idle()
    assert durable.result(run.id) == {"total": 10, "gathered": [1, 2, 3, 20]}
    children = Run.objects.filter(parent_id=run.id).order_by("parent_step", "child_index")
    assert [(c.parent_step, c.task_name, c.durable, c.status) for c in children] == [
        ("fan", "t.add", True, "completed"),
        ("fan", "t.add", True, "completed"),
        ("fan", "t.add", True, "completed"),
        ("fan", "t.plain", False, "completed"),
        ("sum", "t.add", True, "completed"),
    ]
    assert get_run(run.id).executions == 3  # start, after invoke, after gather


def test_failed_child__raises_child_run_failed_in_the_parent(durable):
    run = flows.parent_of_failure.delay()
    durable.run_until_idle()
    assert durable.result(run.id) == "ValueError: plain child broke"


def test_invoking_an_unregistered_task__fails_the_run_clearly(durable):
    run = flows.invoke_unknown.delay()
    durable.run_until_idle()
    record = get_run(run.id)
    assert record.status == RunStatus.FAILED
    assert "no.such.task" in record.error_value["message"]
    assert not Run.objects.filter(parent_id=run.id).exists()


def test_cancel__a_sleeping_run_at_once(durable):
    run = flows.sleepy.delay(3600)
    durable.run_until_idle(advance_clock=False)
    cancel(run.id, "customer asked")
    record = get_run(run.id)
    assert record.status == RunStatus.CANCELLED
    assert record.cancel_reason == "customer asked"
    durable.run_until_idle()
    assert get_run(run.id).status == RunStatus.CANCELLED
    assert bodies(run.id, "after") == 0


def test_cancel__a_queued_run_never_runs(durable):
    run = flows.sleepy.delay(1)
    cancel(run.id)
    assert durable.run_until_idle() == 0
    assert bodies(run.id, "before") == 0


def test_cancel__a_finished_run_is_an_error_and_changes_nothing(durable):
    run = flows.sleepy.delay(1)
    durable.run_until_idle()
    with pytest.raises(RunStateError):
        cancel(run.id)
    assert get_run(run.id).status == RunStatus.COMPLETED
    with pytest.raises(RunNotFound):
        cancel("nope")


def test_cancel__a_waiting_parent_cancels_its_children(durable):
    run = flows.parent.delay(1)
    durable.run_next()  # the parent records its child and waits
    child = Run.objects.get(parent_id=run.id)
    cancel(run.id)
    assert get_run(child.id).status == RunStatus.CANCELLED
    assert durable.run_until_idle() == 0


def test_cancel_on__an_event_cancels_matching_runs(durable):
    keep = flows.cancellable.delay(1)
    drop = flows.cancellable.delay(2)
    durable.run_until_idle(advance_clock=False)
    send_event("order.cancelled", {"order_id": 2})
    assert get_run(drop.id).status == RunStatus.CANCELLED
    assert get_run(keep.id).status == RunStatus.SLEEPING
    durable.run_until_idle()
    assert durable.result(keep.id) == 1


def test_timeouts_finish__cancels_a_run_that_runs_too_long(durable):
    run = flows.deadline.delay()
    durable.run_until_idle()
    record = get_run(run.id)
    assert record.status == RunStatus.CANCELLED
    assert "Timeouts.finish" in record.cancel_reason


def test_on_failure__is_called_with_the_run_id(durable):
    from celery import signals

    sent = []

    def seen(sender=None, body=None, **kwargs):
        sent.append((sender, list(body[0])))

    signals.after_task_publish.connect(seen, weak=False)
    try:
        run = flows.with_handler.delay()
        durable.run_until_idle()
    finally:
        signals.after_task_publish.disconnect(seen)
    assert get_run(run.id).status == RunStatus.FAILED
    assert sent == [("f.failure_handler", [run.id])]


def test_replay__of_a_cancelled_run(durable):
    run = flows.sleepy.delay(60)
    durable.run_until_idle(advance_clock=False)
    cancel(run.id)
    from celery_durable import replay

    replay(run.id)
    durable.run_until_idle()
    assert durable.result(run.id) == 2
    assert bodies(run.id, "before") == 1


def test_sleep_step__is_one_write_when_suspending(durable):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    run = flows.sleep_then_steps.delay(10)
    with CaptureQueriesContext(connection) as queries:
        durable.run_next()
    captured = [q["sql"] for q in queries.captured_queries]
    writes = [sql for sql in captured if sql.split()[0] in ("INSERT", "UPDATE", "DELETE", "WITH")]
    # claim, then one transaction: the run sleeps and the sleep step is recorded; on
    # PostgreSQL that transaction is one statement (the step's INSERT reads the run's UPDATE)
    if connection.vendor == "postgresql":
        assert len(writes) == 2 and writes[1].startswith("WITH"), writes
        assert not [sql for sql in captured if sql.startswith(("BEGIN", "SAVEPOINT"))], captured
    else:
        assert len(writes) == 3, writes
    assert Step.objects.get(run_id=run.id).status == "pending"


def test_no_eta_beyond_the_wakers_horizon__ever_reaches_the_broker(durable, settings):
    """Every message published for a multi-day flow carries at most a PUBLISH_LEAD countdown."""
    from datetime import UTC, datetime

    from celery import current_app, signals

    from celery_durable.engine.services import PUBLISH_LEAD
    from celery_durable.integration import publish as publish_module
    from celery_durable.integration.services import tick

    settings.CELERY_DURABLE = {"WAKER_INTERVAL": 1.0}
    etas = []

    def seen(sender=None, headers=None, **kwargs):
        if headers.get("eta"):  # Celery turns a countdown into an ETA on the real clock
            etas.append((datetime.fromisoformat(headers["eta"]) - datetime.now(UTC)).total_seconds())
        else:
            etas.append(0.0)

    run = flows.dunning.delay(1)
    signals.before_task_publish.connect(seen, weak=False)
    publish_module.dispatch_override = None  # real messages (memory broker); the runner still executes
    try:
        for _ in range(10):
            durable.run_until_idle(advance_clock=False)
            if get_run(run.id).status == RunStatus.COMPLETED:
                break
            wake_at = get_run(run.id).wake_at
            durable.clock.current = wake_at - timedelta(seconds=0.05)  # the waker ticks just before
            tick(current_app)
            durable.clock.current = wake_at
    finally:
        signals.before_task_publish.disconnect(seen)
        publish_module.dispatch_override = durable.published.append
    assert durable.result(run.id) == "paid"
    assert len(etas) == 2  # the two wake-ups after two-day sleeps
    assert all(0 < eta <= PUBLISH_LEAD for eta in etas), etas
    assert max(etas) <= 1.0, etas


def test_reused_event_id_after_the_window__is_a_new_event_not_a_second_copy(durable):
    run = flows.two_long_waits.delay()
    send_event("tick", {"n": 1}, id="reused")
    durable.run_until_idle(advance_clock=False)
    durable.clock.advance(timedelta(hours=25))
    send_event("tick", {"n": 2}, id="reused")
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == [1, 2]


def test_cancel_during_a_failing_step__is_not_retried(durable):
    run = flows.cancelled_mid_step.delay()
    durable.run_until_idle()
    assert get_run(run.id).status == RunStatus.CANCELLED
    assert bodies(run.id, "body") == 1


def test_replay__of_a_run_cancelled_by_its_timeout(durable):
    from celery_durable import replay

    run = flows.deadline.delay()
    durable.run_until_idle()
    assert get_run(run.id).status == RunStatus.CANCELLED
    replay(run.id)
    durable.run_until_idle()
    assert durable.result(run.id) == "late"


def test_replay__of_a_parent_cancelled_while_waiting_for_children(durable):
    from celery_durable import replay

    run = flows.parent.delay(1)
    durable.run_next()  # waits for its child
    cancel(run.id)
    replay(run.id)
    durable.run_until_idle()
    assert durable.result(run.id) == {"total": 2, "gathered": [1, 2, 3, 4]}


def test_cancel_on__matches_a_parameter_left_at_its_default(durable):
    run = flows.cancellable_default.delay()
    durable.run_until_idle(advance_clock=False)
    send_event("region.closed", {"region": "eu"})
    assert get_run(run.id).status == RunStatus.CANCELLED


def test_send_event__reads_the_waits_of_all_waiting_runs_in_one_query(durable):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for(user_id):
        with CaptureQueriesContext(connection) as captured:
            send_event("user.confirmed", {"user_id": user_id})
        return len(captured)

    flows.confirm.delay(1)
    durable.run_until_idle(advance_clock=False)
    few = queries_for(999)  # one waiting run, not a match
    for user in range(2, 30):
        flows.confirm.delay(user)
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.filter(status=RunStatus.WAITING).count() == 29
    assert queries_for(998) == few  # 29 waiting runs, none a match: no query per run


@durable_task(name="t.waits_for_cancellations")
def waits_for_cancellations():
    return step.wait_for_event("cancelled", "order.cancelled", timeout=3600).data["order_id"]


def test_cancel_on__a_run_whose_arguments_no_longer_bind__does_not_break_the_event(durable, caplog):
    # Issue 13 #5: a deploy dropped a parameter; one stale run made every send_event of the
    # name raise TypeError (no event stored, no wait resumed, no other run cancelled).
    stale = flows.cancellable.delay(3)
    drop = flows.cancellable.delay(2)
    durable.run_until_idle(advance_clock=False)
    Run.objects.filter(id=stale.id).update(kwargs='{"order_id": 3, "removed_parameter": 1}')
    waiting = waits_for_cancellations.delay()
    durable.run_until_idle(advance_clock=False)
    event = send_event("order.cancelled", {"order_id": 2})
    assert Event.objects.filter(event_id=event.id).exists()
    assert get_run(drop.id).status == RunStatus.CANCELLED
    assert get_run(stale.id).status == RunStatus.SLEEPING
    durable.run_until_idle(advance_clock=False)
    assert durable.result(waiting.id) == 2  # the wait on the same name resumed
    assert any("do not bind" in r.getMessage() and stale.id in r.getMessage() for r in caplog.records)


@durable_task(name="t.waits_for_go")
def waits_for_go(n):
    return [n, step.wait_for_event("go", "bulk.go", timeout=3600).data["wave"]]


def test_send_event__resumes_any_number_of_waiting_runs_in_the_same_number_of_queries(durable):
    """Issue 14: resuming N waiting runs costs no query per run (10 and 100 runs: the same count)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def resume(count, wave):
        durable.clock.advance(1)  # the runs start after the earlier wave's event
        ids = [waits_for_go.delay(n).id for n in range(count)]
        durable.run_until_idle(advance_clock=False)
        assert Run.objects.filter(id__in=ids, status=RunStatus.WAITING).count() == count
        with CaptureQueriesContext(connection) as captured:
            send_event("bulk.go", {"wave": wave})
        assert Run.objects.filter(id__in=ids, status=RunStatus.QUEUED).count() == count
        durable.run_until_idle(advance_clock=False)
        assert [durable.result(run_id) for run_id in ids] == [[n, wave] for n in range(count)]
        assert Step.objects.filter(run_id__in=ids, step_id="go", status=StepStatus.COMPLETED).count() == count
        return len(captured)

    assert resume(10, "a") == resume(100, "b")


@durable_task(name="t.waits_for_any")
def waits_for_any(n):
    found = step.wait_for_event("go", ["bulk.go", "bulk.stop"], match={"team": "a"}, timeout=3600)
    return [n, found.name, found.data["wave"]]


def _waiting_state(run_id):
    from celery_durable import serialization

    state = serialization.loads(Step.objects.get(run_id=run_id, step_id="go").output)
    assert state.pop("event") is None
    return state


def test_send_event__each_resumed_wait_stores_its_own_state_with_the_event(durable):
    """The wait outputs written in one UPDATE are those written one by one: each its own state."""
    from celery_durable import serialization

    runs = []
    for n in range(3):
        durable.clock.advance(7)  # a different timeout_at in each run's state
        runs.append(waits_for_any.delay(n).id)
        durable.run_until_idle(advance_clock=False)
    states = {run_id: _waiting_state(run_id) for run_id in runs}
    assert len({state["timeout_at"] for state in states.values()}) == 3
    event = send_event("bulk.stop", {"team": "a", "wave": "w", "text": 'ends with "event": null}'})
    for run_id in runs:
        step_row = Step.objects.get(run_id=run_id, step_id="go")
        assert step_row.status == StepStatus.COMPLETED
        stored = serialization.loads(step_row.output)
        assert stored == {**serialization.loads(serialization.dumps(states[run_id], "s")), "event": stored["event"]}
        assert stored["event"]["id"] == event.id and stored["event"]["data"]["text"] == 'ends with "event": null}'
    durable.run_until_idle(advance_clock=False)
    assert [durable.result(run_id) for run_id in runs] == [[n, "bulk.stop", "w"] for n in range(3)]


def test_send_event__a_wait_output_in_another_layout_is_written_from_its_state(durable):
    """A waiting output that does not end with the event (an older layout) is not spliced."""
    from celery_durable import serialization

    plain, other = waits_for_any.delay(1).id, waits_for_any.delay(2).id
    durable.run_until_idle(advance_clock=False)
    state = _waiting_state(other)
    reordered = serialization.dumps({"event": None, **state}, "s")  # the event first
    Step.objects.filter(run_id=other, step_id="go").update(output=reordered)
    send_event("bulk.go", {"team": "a", "wave": 9})
    stored = serialization.loads(Step.objects.get(run_id=other, step_id="go").output)
    assert stored["event"]["data"] == {"team": "a", "wave": 9}
    assert {key: value for key, value in stored.items() if key != "event"} == serialization.loads(
        serialization.dumps(state, "s")
    )
    durable.run_until_idle(advance_clock=False)
    assert [durable.result(plain), durable.result(other)] == [[1, "bulk.go", 9], [2, "bulk.go", 9]]
