"""Issue 16, item 4: step.wait_for_event with several names returns the first matching event."""

import pytest
from celery import current_app

from celery_durable import durable_task, send_event, step
from celery_durable.engine.writer import RunWriter
from celery_durable.models import Run, Step
from celery_durable.runtime.events import ANY_OF
from celery_durable.states import RunStatus
from tests.testapp import deploy_tasks


def test_waits_for_either_name__the_one_sent_resumes_it(durable):
    succeeded, failed = deploy_tasks.payment.delay(1), deploy_tasks.payment.delay(2)
    durable.run_until_idle(advance_clock=False)
    for run in (succeeded, failed):
        record = Run.objects.get(id=run.id)
        assert (record.status, record.waiting_for) == (RunStatus.WAITING, ANY_OF)
        state = Step.objects.get(run_id=run.id, step_id="outcome").output_value
        assert state["names"] == ["payment.succeeded", "payment.failed"]
    send_event("payment.failed", {"order_id": 2, "why": "declined"})
    send_event("payment.refunded", {"order_id": 1})  # not waited for
    assert Run.objects.get(id=succeeded.id).status == RunStatus.WAITING
    send_event("payment.succeeded", {"order_id": 1})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(succeeded.id) == ["payment.succeeded", {"order_id": 1}]
    assert durable.result(failed.id) == ["payment.failed", {"order_id": 2, "why": "declined"}]


def test_match__applies_to_every_name(durable):
    run = deploy_tasks.payment.delay(3)
    durable.run_until_idle(advance_clock=False)
    send_event("payment.failed", {"order_id": 4})
    send_event("payment.succeeded", {"order_id": 5})
    assert Run.objects.get(id=run.id).status == RunStatus.WAITING
    send_event("payment.succeeded", {"order_id": 3})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id)[0] == "payment.succeeded"


def test_event_sent_before_the_wait__is_found_without_suspending(durable):
    run = deploy_tasks.payment.delay(8)  # recorded, not executed yet
    send_event("payment.failed", {"order_id": 8})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == ["payment.failed", {"order_id": 8}]
    assert Run.objects.get(id=run.id).executions == 1  # it never waited


def test_the_oldest_of_the_names__wins(durable):
    run = deploy_tasks.payment.delay(9)
    send_event("payment.succeeded", {"order_id": 9, "n": 1})
    send_event("payment.failed", {"order_id": 9, "n": 2})
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == ["payment.succeeded", {"order_id": 9, "n": 1}]


def test_event_sent_while_the_wait_commits__is_not_lost(durable, monkeypatch):
    """The run looked (nothing yet), the event is committed, then the run commits its wait."""
    run = deploy_tasks.payment.delay(10)
    looked = []

    def look_then_event_arrives(self, names, match, exclude):
        looked.append(names)
        send_event("payment.succeeded", {"order_id": 10})  # no waiting run to resume yet
        return None

    monkeypatch.setattr(RunWriter, "find_event", look_then_event_arrives)
    durable.run_next()
    monkeypatch.undo()
    assert looked == [["payment.succeeded", "payment.failed"]]
    # The execution's re-check after committing the wait found the event and queued the run.
    assert Run.objects.get(id=run.id).status == RunStatus.QUEUED
    durable.run_until_idle(advance_clock=False)
    assert durable.result(run.id) == ["payment.succeeded", {"order_id": 10}]


def test_timeout__returns_none(durable):
    run = deploy_tasks.payment.delay(11)
    durable.run_until_idle()  # advances the fake clock to the wait's timeout
    assert durable.result(run.id) is None


def test_one_name_in_a_list__is_stored_as_a_single_name_wait(durable):
    @durable_task(name="wa.single")
    def single():
        event = step.wait_for_event("w", ["only.one", "only.one"], timeout=60)
        return event and event.name

    try:
        run = single.delay()
        durable.run_until_idle(advance_clock=False)
        assert Run.objects.get(id=run.id).waiting_for == "only.one"  # found by the exact-name index
        send_event("only.one", {})
        durable.run_until_idle(advance_clock=False)
        assert durable.result(run.id) == "only.one"
    finally:
        current_app.tasks.pop("wa.single", None)


@pytest.mark.parametrize("names", [[], ["ok", ""], ["ok", 3], ("ok", "x" * 256), {"a": 1}])
def test_bad_names__are_a_config_error_and_record_nothing(durable, names):
    @durable_task(name="wa.bad", retries=0)
    def bad():
        return step.wait_for_event("w", names, timeout=60)

    try:
        run = bad.delay()
        durable.run_until_idle(advance_clock=False)
        record = Run.objects.get(id=run.id)
        assert (record.status, record.error_value["type"]) == (RunStatus.FAILED, "DurableConfigError")
        assert not Step.objects.filter(run_id=run.id).exists()
    finally:
        current_app.tasks.pop("wa.bad", None)
