"""Security pass (issue 6): keys are never evaluated, the admin escapes and checks permissions,
event data is size-limited, and run arguments never reach the logs.

See docs/security.md for the threat model these tests back.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from celery_durable import (
    Concurrency,
    DurableConfigError,
    RateLimit,
    Singleton,
    durable_task,
    send_event,
    step,
)
from celery_durable.exceptions import StepOutputTooLarge
from celery_durable.logs import log_signals, stop_logging_signals
from celery_durable.models import Event, Run, Step
from celery_durable.states import RunStatus
from tests.testapp import flows, tasks

SCRIPT = "<script>alert('pwned')</script>"
CHANGELIST = "admin:celery_durable_run_changelist"


def run_url(run_id: str, name: str = "change") -> str:
    return reverse(f"admin:celery_durable_run_{name}", args=[run_id])


# --- keys are parameter paths or callables, never evaluated --------------------------------------


@pytest.mark.parametrize("key", ["__import__('os')", "os.system('id')", "a[0]", "a + b", "lambda: 1", "a..b", ""])
def test_key_strings__that_are_not_parameter_paths__are_refused_at_declaration(key):
    def kw_task(**kwargs: Any) -> None:  # accepts any parameter name: only the path check stands
        return None

    for make in (
        lambda: durable_task(name="sec.idem", idempotency_key=key)(kw_task),
        lambda: Concurrency(limit=1, key=key),
        lambda: Singleton(key=key),
        lambda: RateLimit(limit=1, period=60, key=key),
    ):
        with pytest.raises(DurableConfigError):
            make()


def test_key_path__is_looked_up_in_the_arguments_not_evaluated(durable):
    a = flows.idempotent.delay("__import__('os').getcwd()")
    b = flows.idempotent.delay("__import__('os').getcwd()")
    assert a.id == b.id  # the key's value is the argument, compared as a string
    assert Run.objects.filter(task_name="f.idempotent").count() == 1


# --- event data size limit --------------------------------------------------------------------------


def test_send_event__data_above_the_limit__is_refused_by_name_and_nothing_is_stored(durable, settings):
    settings.CELERY_DURABLE = {"MAX_ARGUMENT_BYTES": 100}
    before = Event.objects.count()
    with pytest.raises(StepOutputTooLarge) as info:
        send_event("sec.big", {"blob": "x" * 200})
    assert "MAX_ARGUMENT_BYTES" in str(info.value) and "sec.big" in str(info.value)
    assert Event.objects.count() == before
    send_event("sec.big", {"blob": "x" * 50})  # under the limit
    assert Event.objects.count() == before + 1


# --- admin escaping ------------------------------------------------------------------------------


def test_admin__payloads_in_kwargs_event_data_step_output_and_search_are_escaped(admin_client, durable):
    waiter = flows.confirm.delay(user_id=SCRIPT).id
    durable.run_until_idle(advance_clock=False)
    send_event("user.confirmed", {"user_id": SCRIPT, "note": SCRIPT}, id=SCRIPT)
    durable.run_until_idle(advance_clock=False)
    run = Run.objects.get(id=waiter)
    assert run.status == RunStatus.COMPLETED and run.result_value == SCRIPT
    assert Step.objects.filter(run_id=waiter, step_id="confirmation", output__contains="pwned").exists()
    cancelled = tasks.add.delay(1, 2).id
    from celery_durable import cancel

    cancel(cancelled, reason=SCRIPT)
    pages = [
        run_url(waiter),
        run_url(cancelled),
        reverse(CHANGELIST),
        f"{reverse(CHANGELIST)}?q={SCRIPT}",
        f"{reverse(CHANGELIST)}?task={SCRIPT}",
        reverse("admin:celery_durable_run_dashboard"),
    ]
    for url in pages:
        response = admin_client.get(url, follow=True)
        body = response.content.decode()
        assert response.status_code == 200, url
        assert "<script>alert" not in body, url
    assert "&lt;script&gt;alert" in admin_client.get(run_url(waiter)).content.decode()


# --- admin permissions ---------------------------------------------------------------------------


def _staff(username: str, *perms: str, is_staff: bool = True) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=is_staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    client = Client()
    client.force_login(user)
    return client


def _failed_and_queued(durable: Any) -> tuple[str, str]:
    failed = tasks.non_retriable.delay().id
    durable.run_until_idle()
    queued = tasks.add.delay(1, 2).id
    assert Run.objects.get(id=failed).status == RunStatus.FAILED
    return failed, queued


@pytest.mark.parametrize("who", ["anonymous", "non-staff with every permission"])
def test_admin__anonymous_and_non_staff__are_sent_to_login_and_change_nothing(who, durable):
    failed, queued = _failed_and_queued(durable)
    perms = ("view_run", "replay_run", "cancel_run")
    client = Client() if who == "anonymous" else _staff("outsider", *perms, is_staff=False)
    for url in (reverse(CHANGELIST), run_url(failed), reverse("admin:celery_durable_run_dashboard")):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
    for response in (
        client.post(run_url(failed, "replay"), {"from": "start"}),
        client.post(run_url(queued, "cancel")),
        client.post(reverse(CHANGELIST), {"action": "cancel_runs", "_selected_action": [queued]}),
    ):
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert Run.objects.get(id=failed).status == RunStatus.FAILED
    assert Run.objects.get(id=queued).status == RunStatus.QUEUED


def test_admin__staff_without_permissions__gets_403_and_changes_nothing(durable):
    failed, queued = _failed_and_queued(durable)
    client = _staff("bare")
    for url in (reverse(CHANGELIST), run_url(failed), reverse("admin:celery_durable_run_dashboard")):
        assert client.get(url).status_code == 403, url
    assert client.post(run_url(failed, "replay"), {"from": "start"}).status_code == 403
    assert client.post(run_url(queued, "cancel")).status_code == 403
    bulk = {"action": "cancel_runs", "_selected_action": [queued]}
    assert client.post(reverse(CHANGELIST), bulk).status_code == 403
    assert Run.objects.get(id=failed).status == RunStatus.FAILED
    assert Run.objects.get(id=queued).status == RunStatus.QUEUED
    assert Step.objects.filter(run_id=failed).count() == 2  # nothing deleted by a replay


# --- secrets never logged --------------------------------------------------------------------------

SECRET = "sk_live_51SECRETxyzzy"


@durable_task(name="sec.charge", retries=1, retry_backoff=False, default_retry_delay=0)
def charge(card_token: str, amount: int) -> str:
    def body() -> str:
        if step.attempt == 1:
            raise ValueError("card declined")  # a retried step: WARNING and INFO lines
        return "ok"

    step.run("charge", body)
    step.run("receipt", lambda: {"amount": amount})
    return "paid"


@durable_task(name="sec.fails", retries=0)
def fails(password: str) -> None:
    step.run("boom", lambda: 1 / 0)  # a failed run: ERROR line with the error


def test_logs__never_carry_run_arguments(durable, caplog):
    caplog.set_level(logging.DEBUG)
    log_signals()
    try:
        paid = charge.delay(SECRET, amount=10).id
        failed = fails.delay(password=SECRET).id
        durable.run_until_idle()
    finally:
        stop_logging_signals()
    assert durable.result(paid) == "paid"
    assert Run.objects.get(id=failed).status == RunStatus.FAILED
    mine = [r for r in caplog.records if r.name.startswith("celery_durable")]
    assert {r.getMessage().split(" ")[1] for r in mine if r.name == "celery_durable.events"} >= {"run", "step"}
    assert any(paid in r.getMessage() for r in mine) and any(failed in r.getMessage() for r in mine)
    for record in caplog.records:
        rendered = record.getMessage() + repr(record.__dict__)
        assert SECRET not in rendered, f"{record.name}: {record.getMessage()}"
