"""Cancel asks first; every cancel and replay from the admin is a LogEntry naming the user."""

import html
import uuid

from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from celery_durable import NonRetriableError
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.testapp import flows, tasks

CHANGELIST = "admin:celery_durable_run_changelist"


def run_url(run_id, name="change"):
    return reverse(f"admin:celery_durable_run_{name}", args=[run_id])


def entries(run_id):
    rows = LogEntry.objects.filter(object_id=run_id).order_by("pk")
    return list(rows.values_list("user__username", "change_message"))


def failed_run(durable, n=1):
    durable.fail_step("t.three_steps", "two", NonRetriableError("card declined"))
    run_id = tasks.three_steps.delay(n).id
    durable.run_until_idle()
    assert Run.objects.get(id=run_id).status == RunStatus.FAILED
    return run_id


def test_cancel__asks_for_confirmation_first(admin_client, durable):
    parent = flows.confirm.delay(770090).id
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.get(id=parent).status == RunStatus.WAITING
    child = Run.objects.create(
        id=str(uuid.uuid4()), task_name="t.add", status=RunStatus.QUEUED, parent_id=parent, created_at=timezone.now()
    )
    # The run page's button leads to a confirmation page; nothing changes on the way.
    body = html.unescape(admin_client.get(run_url(parent)).content.decode())
    assert f'href="{run_url(parent, "cancel")}"' in body
    response = admin_client.get(run_url(parent, "cancel"))
    body = html.unescape(response.content.decode())
    assert response.status_code == 200 and "Yes, cancel this run" in body
    assert "its wait ends" in body and "Its 1 unfinished child run is cancelled too" in body
    # A POST without the confirmation shows the page again, keeping the reason typed.
    response = admin_client.post(run_url(parent, "cancel"), {"reason": "typo"})
    assert response.status_code == 200 and 'value="typo"' in response.content.decode()
    assert Run.objects.get(id=parent).status == RunStatus.WAITING
    assert entries(parent) == []
    # Confirmed: cancelled, and recorded with the user's name.
    admin_client.post(run_url(parent, "cancel"), {"reason": "wrong order", "confirmed": "yes"})
    assert Run.objects.get(id=parent).status == RunStatus.CANCELLED
    assert Run.objects.get(id=child.id).status == RunStatus.CANCELLED
    assert entries(parent) == [("admin", "Cancelled (reason: wrong order)")]


def test_cancel_confirmation__of_a_finished_run_offers_nothing(admin_client, durable):
    run_id = failed_run(durable)
    body = admin_client.get(run_url(run_id, "cancel")).content.decode()
    assert "only unfinished runs can be cancelled" in body and "Yes, cancel" not in body


def test_replay__is_recorded_with_the_failure_it_replaced(admin_client, durable):
    run_id = failed_run(durable)
    admin_client.post(run_url(run_id, "replay"), {"from": "failed"})
    durable.run_until_idle()
    assert Run.objects.get(id=run_id).status == RunStatus.COMPLETED
    assert Run.objects.get(id=run_id).error is None  # the run itself no longer says it failed...
    ((user, message),) = entries(run_id)
    assert user == "admin"
    assert message == "Replayed from the failed step; was failed: NonRetriableError: card declined"
    # ...its history does, on the run page.
    body = html.unescape(admin_client.get(run_url(run_id)).content.decode())
    history = body[body.index('id="durable-history"') :]
    history = history[: history.index("</section>")]
    assert "admin" in history and "was failed: NonRetriableError: card declined" in history
    assert admin_client.get(run_url(run_id, "history")).status_code == 200


def test_refused_replay__records_nothing(admin_client, durable):
    run_id = tasks.add.delay(1, 2).id
    durable.run_until_idle()
    admin_client.post(run_url(run_id, "replay"), {"from": "failed"})
    assert entries(run_id) == []


def test_bulk_actions__record_one_entry_per_changed_run(db, durable):
    user = User.objects.create_user("oncall", password="pw", is_staff=True)
    for codename in ("view_run", "replay_run", "cancel_run"):
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    client = Client()
    client.force_login(user)
    failed = [failed_run(durable, n) for n in (1, 2)]
    done = tasks.add.delay(1, 1).id
    durable.run_until_idle()
    client.post(
        reverse(CHANGELIST),
        {"action": "replay_failed_step", "_selected_action": [*failed, done], "confirmed": "yes"},
    )
    for run_id in failed:
        assert entries(run_id) == [
            ("oncall", "Replayed from the failed step (bulk action); was failed: NonRetriableError: card declined")
        ]
    assert entries(done) == []  # skipped: not failed
    queued = tasks.add.delay(2, 2).id
    client.post(
        reverse(CHANGELIST),
        {"action": "cancel_runs", "_selected_action": [queued], "confirmed": "yes", "reason": "flood"},
    )
    assert Run.objects.get(id=queued).status == RunStatus.CANCELLED
    assert entries(queued) == [("oncall", "Cancelled (bulk action; reason: flood)")]
