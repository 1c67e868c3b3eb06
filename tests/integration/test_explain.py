"""Why is this run waiting? ``explain`` for every gate, the run page and ``durable_runs explain``."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from celery_durable import explain, pause, resume, set_limit
from celery_durable.models import Pause, Run, Slot
from tests.testapp import flows, tasks


def drain(durable):
    while durable.run_next() is not None:
        pass


def test_queued__in_the_broker_queue(durable):
    run = tasks.add.delay(1, 2)
    why = explain(run.id)
    assert why.gate == "broker" and why.status == "queued"
    assert "in the broker queue since" in str(why)
    assert why.since == Run.objects.get(id=run.id).published_at


def test_countdown__scheduled_with_its_start(durable):
    run = tasks.add.apply_async((1, 2), countdown=300)
    why = explain(run.id)
    assert why.gate == "scheduled"
    assert why.estimated_start == Run.objects.get(id=run.id).wake_at


def test_full_key__backlog_with_the_runs_holding_its_slots(durable):
    first = flows.per_user.delay(1)
    second = flows.per_user.delay(1)
    why = explain(second.id)
    assert why.gate == "concurrency"
    assert why.holders == [first.id]
    assert why.data["keys"] == [
        {"key": "f.per_user:user_id:1", "limit": 1, "in_use": 1, "holders": [first.id], "ahead": 0}
    ]
    assert why.estimated_start is None
    assert "f.per_user:user_id:1 is full (1/1 slots" in str(why)


def test_full_key__shows_the_limit_in_force_when_overridden(durable):
    first = flows.per_user.delay(1)
    second = flows.per_user.delay(1)
    set_limit(flows.per_user, 1, 1)  # an override equal to the declared limit: still full
    Slot.objects.filter(key="f.per_user:user_id:1").update(limit=5)  # a deploy raised the declared one
    why = explain(second.id)
    assert why.data["keys"][0]["limit"] == 1  # the override wins, as it does for admission
    assert "is full (1/1 slots" in str(why)
    assert first.id in why.holders


def test_fair_key__counts_the_runs_ahead_in_turn(durable):
    flows.fair.delay("a", -1)  # takes the only slot
    a = [flows.fair.delay("a", n) for n in range(3)]
    b = [flows.fair.delay("b", n) for n in range(2)]
    # Served a0, b0, a1, b1, a2: b1 has three ahead of it, a2 four, though b1 was called last.
    assert [explain(r.id).data["keys"][0]["ahead"] for r in (a[0], b[0], a[1], b[1], a[2])] == [0, 1, 2, 3, 4]


def test_throttle__the_time_of_the_next_slot(durable):
    flows.throttled.delay("t", 0)
    second = flows.throttled.delay("t", 1)
    why = explain(second.id)
    assert why.gate == "throttle"
    assert why.estimated_start == durable.clock.now() + timedelta(seconds=10)


def test_debounce__its_deadline(durable):
    run = flows.debounced.delay("acme", 1)
    why = explain(run.id)
    assert why.gate == "debounce"
    assert why.estimated_start == durable.clock.now() + timedelta(seconds=60)


def test_singleton__a_skipped_call_names_the_holder(durable):
    holder = flows.singleton_skip.delay(7)
    skipped = flows.singleton_skip.delay(7)
    why = explain(skipped.id)
    assert why.gate == "singleton" and why.holders == [holder.id]


def test_sleep__until_its_wake_time(durable):
    run = flows.sleepy.delay(60)
    drain(durable)
    why = explain(run.id)
    assert why.gate == "sleep"
    assert why.estimated_start == Run.objects.get(id=run.id).wake_at
    assert why.data == {"step_id": "nap"}


def test_event_wait__with_its_match(durable):
    run = flows.confirm.delay(5)
    drain(durable)
    why = explain(run.id)
    assert why.gate == "event"
    assert why.data["events"] == ["user.confirmed"] and why.data["match"] == {"user_id": 5}
    assert "waiting for event 'user.confirmed' matching" in str(why)


def test_children__the_unfinished_child_runs(durable):
    run = flows.parent.delay(2)
    durable.run_next()
    why = explain(run.id)
    assert why.gate == "children"
    children = list(Run.objects.filter(parent_id=run.id).values_list("id", flat=True))
    assert why.holders == children and children


def test_step_retry__the_retry_time(durable):
    durable.fail_step("t.three_steps", "two", RuntimeError("flaky"))
    run = tasks.three_steps.delay(1)
    durable.run_next()
    why = explain(run.id)
    assert why.gate == "retry" and why.data["step_id"] == "two" and why.data["attempts"] == 1
    assert why.estimated_start == Run.objects.get(id=run.id).wake_at  # None: a short delay rides the broker


def test_paused__by_whom_and_since(durable):
    run = tasks.add.delay(1, 2)
    pause("t.add", by="ops")
    why = explain(run.id)
    assert why.gate == "paused" and why.data == {"task_name": "t.add", "key": None, "by": "ops"}
    assert "task t.add is paused since" in str(why) and "by ops" in str(why)
    resume("t.add")
    assert explain(run.id).gate == "broker"


def test_finished__not_waiting(durable):
    run = tasks.add.delay(1, 2)
    durable.run_until_idle()
    assert explain(run.id).gate == "finished"


def call(*args):
    out = StringIO()
    call_command("durable_runs", *args, stdout=out)
    return out.getvalue()


def test_command__prints_the_explanation_and_json(durable):
    first = flows.per_user.delay(3)
    second = flows.per_user.delay(3)
    text = call("explain", second.id)
    assert "in the backlog" in text and f"held by: {first.id}" in text
    data = json.loads(call("explain", second.id, "--json"))
    assert data["gate"] == "concurrency" and data["holders"] == [first.id]
    with pytest.raises(CommandError, match="no-such-run"):
        call("explain", "no-such-run")


def staff(username, *codenames):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    client = Client()
    client.force_login(user)
    return client


def test_run_page__says_why_in_words_with_links_to_the_holders(durable):
    first = flows.per_user.delay(4)
    second = flows.per_user.delay(4)
    client = staff("viewer", "view_run")
    body = client.get(reverse("admin:celery_durable_run_change", args=[second.id])).content.decode()
    assert 'id="durable-why"' in body and "in the backlog" in body
    assert reverse("admin:celery_durable_run_change", args=[first.id]) in body


def test_admin_pause_and_resume__need_the_permission_and_are_logged(durable, django_capture_on_commit_callbacks):
    run = tasks.add.delay(1, 2)
    changelist = reverse("admin:celery_durable_run_changelist")
    viewer = staff("viewer", "view_run")
    viewer.post(changelist, {"action": "pause_tasks", "_selected_action": [run.id]})
    assert not Pause.objects.exists()  # no permission: the action is not offered
    oncall = staff("oncall", "view_run", "pause_task")
    oncall.post(changelist, {"action": "pause_tasks", "_selected_action": [run.id]})
    row = Pause.objects.get()
    assert (row.task_name, row.key, row.by) == ("t.add", None, "admin:oncall")
    drain(durable)
    assert Run.objects.get(id=run.id).status == "paused"
    body = oncall.get(reverse("admin:celery_durable_run_change", args=[run.id])).content.decode()
    assert "task t.add is paused since" in body and reverse("admin:celery_durable_pause_changelist") in body
    pauses = reverse("admin:celery_durable_pause_changelist")
    assert "t.add" in oncall.get(pauses).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        oncall.post(pauses, {"action": "resume_pauses", "_selected_action": [row.pk]})
    assert not Pause.objects.exists()
    assert Run.objects.get(id=run.id).status == "queued"
    logged = list(LogEntry.objects.order_by("pk").values_list("user__username", "change_message"))
    assert logged == [("oncall", "Paused t.add (admin)"), ("oncall", "Resumed t.add (admin)")]


def test_admin_add_form__pauses_a_key(durable):
    oncall = staff("oncall", "view_run", "pause_task")
    response = oncall.post(
        reverse("admin:celery_durable_pause_add"), {"task_name": "f.per_user", "key": "f.per_user:user_id:1"}
    )
    assert response.status_code == 302
    row = Pause.objects.get()
    assert (row.task_name, row.key, row.by) == ("f.per_user", "f.per_user:user_id:1", "admin:oncall")
    assert LogEntry.objects.get().change_message == "Paused f.per_user [f.per_user:user_id:1] (admin)"


def test_admin_pause_keys__pauses_the_selected_runs_keys_only(durable):
    keyed = flows.per_user.delay(8)
    plain = tasks.add.delay(1, 1)
    oncall = staff("oncall", "view_run", "pause_task")
    changelist = reverse("admin:celery_durable_run_changelist")
    oncall.post(changelist, {"action": "pause_keys", "_selected_action": [keyed.id, plain.id]})
    assert list(Pause.objects.values_list("task_name", "key", "by")) == [
        ("f.per_user", "f.per_user:user_id:8", "admin:oncall")
    ]
    drain(durable)
    assert Run.objects.get(id=keyed.id).status == "paused"
    assert Run.objects.get(id=plain.id).status == "completed"


def test_throttle__names_its_key_when_the_task_has_one(durable):
    flows.throttled.delay("t", 0)
    second = flows.throttled.delay("t", 1)
    assert explain(second.id).data["key"] == "throttle:f.throttled:t"
