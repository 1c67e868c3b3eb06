"""Engine behaviour that mutation testing (mutmut) showed no test guarded: one test per surviving mutant.

docs/reliability.md "Mutation testing (mutmut)" lists each survivor and the test that kills it.
"""

import pytest

from celery_durable import CancelOn, DurableConfigError, Singleton, cancel, durable_task, get_run, send_event, step
from celery_durable import signals as durable_signals
from celery_durable.engine.active import ActiveRuns
from celery_durable.engine.declaration import celery_retry_options
from celery_durable.engine.deploycheck import check_deploy
from celery_durable.integration.registry import CeleryRegistry
from celery_durable.models import Run
from celery_durable.states import RunStatus
from celery_durable.store import runs
from tests.integration.race_tools import before_statement, concurrently, update_of
from tests.testapp import flows
from tests.testapp.tasks import counted


@durable_task(name="ms.cancels_itself", bind=True)
def cancels_itself(self):
    run_id = self.step.run_id
    step.run("ask", lambda: cancel(run_id, "enough") and None)
    return step.run("never", counted, "never", 1)


@durable_task(name="ms.parent_of_cancelled")
def parent_of_cancelled():
    try:
        step.invoke("child", cancels_itself.s())
    except Exception as exc:  # the child's cancellation, raised in the parent
        return type(exc).__name__
    return "not cancelled"


def test_celery_retry_options__max_retries_countdown_and_autoretry_map_to_ours():
    assert celery_retry_options({"max_retries": 4}) == {"retries": 4}
    assert celery_retry_options({"retry_kwargs": {"countdown": 7}}) == {"default_retry_delay": 7}
    mapped = celery_retry_options({"autoretry_for": (ConnectionError,)})
    assert mapped["retry_backoff"] is False  # a bool, as RetryPolicy declares it


@pytest.mark.parametrize("bind", [False, True])  # bind=True: Celery keeps ``run`` a plain function
def test_flow_option_key__naming_a_missing_parameter_is_refused_at_declaration(bind):
    with pytest.raises(DurableConfigError, match="'missing' names no parameter"):

        @durable_task(name="ms.bad_singleton_key", bind=bind, singleton=Singleton(key="missing"))
        def bad_singleton_key(*args):
            return args


@pytest.mark.parametrize("bad", ["", 5])
def test_on_event__an_invalid_event_name_is_refused_at_declaration(bad):
    with pytest.raises(DurableConfigError, match="on_event"):

        @durable_task(name="ms.bad_on_event", on_event=bad)
        def bad_on_event(event):
            return None


def test_cancel_on__a_list_of_rules_is_accepted_and_a_single_rule_is_refused():
    rule = CancelOn(event="order.cancelled", match={"order_id": "order_id"})

    @durable_task(name="ms.cancel_on_list", cancel_on=[rule])
    def cancel_on_list(order_id):
        return order_id

    assert cancel_on_list.name == "ms.cancel_on_list"
    with pytest.raises(DurableConfigError, match="cancel_on"):

        @durable_task(name="ms.cancel_on_single", cancel_on=rule)
        def cancel_on_single(order_id):
            return order_id


def test_active_runs__a_new_registry_starts_empty():
    fresh = ActiveRuns()
    fresh.ids.add("r1")
    assert (fresh.ids, fresh.cancelled) == ({"r1"}, set())


def test_send_event__publishes_the_message_of_the_run_it_resumed(durable, django_capture_on_commit_callbacks):
    run = flows.confirm.delay(7)
    durable.run_until_idle(advance_clock=False)
    durable.published.clear()
    with django_capture_on_commit_callbacks(execute=True):
        send_event("user.confirmed", {"user_id": 7})
    assert [m.run_id for m in durable.published] == [run.id]


def test_stop__a_child_cancelled_at_a_step_boundary_resumes_its_parent_and_is_announced(durable):
    heard = []

    def seen(sender=None, run_id=None, **kwargs):
        heard.append(run_id)

    durable_signals.run_cancelled.connect(seen)
    try:
        parent = parent_of_cancelled.delay()
        durable.run_next()  # the parent records its child and waits
        child = Run.objects.get(parent_id=parent.id)
        durable.published.clear()
        assert durable.run_next() == child.id  # cancels itself in a step, stops at the next boundary
        assert get_run(child.id).status == RunStatus.CANCELLED
        assert heard == [child.id]
        assert parent.id in [m.run_id for m in durable.published]  # the waiting parent resumes
    finally:
        durable_signals.run_cancelled.disconnect(seen)
    durable.run_until_idle()
    assert durable.result(parent.id) == "ChildRunFailed"  # a cancelled child fails its parent's invoke


def _unfinished(run_id, task_name):
    assert runs.create(run_id=run_id, task_name=task_name, args="[]", kwargs="{}", options="{}")
    Run.objects.filter(id=run_id).update(executions=1)


def test_check_deploy__tells_an_unregistered_task_from_one_no_longer_durable_and_honours_task_names(durable):
    _unfinished("gone", "ms.never_registered")
    _unfinished("plain", "t.plain")
    report = check_deploy(CeleryRegistry())
    details = {v.run_id: v.detail for v in report.failures}
    assert "'ms.never_registered' is not registered" in details["gone"]
    assert "'t.plain' is no longer a durable task" in details["plain"]
    only = check_deploy(CeleryRegistry(), ["t.plain"])
    assert (only.checked, [v.run_id for v in only.failures]) == (1, ["plain"])


@pytest.mark.django_db(transaction=True)  # the cancel commits from another connection (not on SQLite)
def test_event_arrived_meanwhile__a_run_cancelled_before_it_could_take_the_event_publishes_nothing(durable, deliver):
    """The run commits its wait, finds the event sent meanwhile, but a cancel wins the compare-and-set."""
    run = flows.confirm.delay(5)
    wait_update = update_of(Run, "lease_owner", "lease_expires_at", "status", "waiting_for")
    resolve_update = update_of(Run, "status", "waiting_for", "wake_at", "published_at")
    event = lambda: durable.send_event("user.confirmed", {"user_id": 5})  # noqa: E731
    stop = lambda: cancel(run.id, "changed my mind")  # noqa: E731
    durable.published.clear()
    with (
        before_statement(wait_update, lambda: concurrently(event)) as sent,
        before_statement(resolve_update, lambda: concurrently(stop)) as cancelled,
    ):
        deliver(run.id)
    assert sent and cancelled
    assert get_run(run.id).status == RunStatus.CANCELLED
    assert durable.published == []
