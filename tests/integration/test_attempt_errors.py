"""Every failed attempt of a step is kept: on its row, in the admin and in ``durable_runs show``."""

import json
from io import StringIO

from django.core.management import call_command
from django.urls import reverse

from celery_durable import NonRetriableError
from celery_durable.models import Step
from celery_durable.states import StepStatus
from tests.testapp import tasks


class Declined(Exception):
    pass


def test_a_step_that_failed_twice_then_completed__keeps_both_errors(durable, admin_client):
    durable.fail_step("t.three_steps", "two", Declined("attempt one: card declined"))
    durable.fail_step("t.three_steps", "two", Declined("attempt two: bank timeout"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert durable.result(run.id) == 7
    step = Step.objects.get(run_id=run.id, step_id="two")
    assert (step.status, step.attempts) == (StepStatus.COMPLETED, 3)
    record = json.loads(step.error)
    assert record["message"] == "attempt two: bank timeout"
    assert [(a["attempt"], a["message"]) for a in record["earlier"]] == [(1, "attempt one: card declined")]

    page = admin_client.get(reverse("admin:celery_durable_run_change", args=[run.id])).content.decode()
    assert "2 failed attempts" in page
    assert "attempt one: card declined" in page and "attempt two: bank timeout" in page

    out = StringIO()
    call_command("durable_runs", "show", run.id, "--json", stdout=out)
    shown = {s["step_id"]: s for s in json.loads(out.getvalue())["steps"]}
    assert shown["two"]["error"]["earlier"][0]["message"] == "attempt one: card declined"


def test_a_step_that_failed_for_good__lists_each_attempt(durable, admin_client):
    durable.fail_step("t.three_steps", "two", Declined("first"))
    durable.fail_step("t.three_steps", "two", Declined("second"))
    durable.fail_step("t.three_steps", "two", NonRetriableError("third, for good"))
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    record = json.loads(Step.objects.get(run_id=run.id, step_id="two").error)
    assert record["message"] == "third, for good"
    assert [a["message"] for a in record["earlier"]] == ["first", "second"]
    page = admin_client.get(reverse("admin:celery_durable_run_change", args=[run.id])).content.decode()
    assert "3 failed attempts" in page
