"""The schedules page: next/last tick, and pause, resume, trigger now and backfill (``manage_schedule``)."""

import html
from datetime import timedelta

from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from celery_durable import Schedule
from celery_durable.engine.schedules import tick_run_id
from celery_durable.models import Run, ScheduleState
from tests.integration.scheduling import START, services

LIST = "admin:celery_durable_schedulestate_changelist"


def client_with(*perms):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    client = Client()
    client.force_login(user)
    return client


def text(response):
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def backfill_url(row):
    return reverse("admin:celery_durable_schedulestate_backfill", args=[row.pk])


def test_list__shows_each_schedule_with_its_ticks_and_last_run(admin_client, declare, durable):
    task = declare("listed", Schedule(cron="*/5 * * * *", overlap="buffer_one"))
    services()
    durable.clock.advance(timedelta(minutes=5))
    services()
    body = text(admin_client.get(reverse(LIST)))
    assert task.name in body
    assert "cron */5 * * * *" in body
    assert "buffer_one" in body
    assert tick_run_id(task.name, START + timedelta(minutes=5)) in body
    assert "Pause the selected schedules" in body


def test_actions__need_the_manage_schedule_permission(declare, durable):
    task = declare("guarded", Schedule(every=timedelta(minutes=1)))
    services()
    row = ScheduleState.objects.get(task_name=task.name)
    viewer = client_with("view_schedulestate")
    body = text(viewer.get(reverse(LIST)))
    assert task.name in body and "Pause the selected schedules" not in body
    response = viewer.post(reverse(LIST), {"action": "pause", "_selected_action": [row.pk]})
    assert not ScheduleState.objects.get(pk=row.pk).paused
    assert response.status_code in (200, 302)
    assert viewer.get(backfill_url(row)).status_code == 403
    form = {"start": "2025-12-31 00:00:00", "end": "2026-01-01 00:00:00"}
    assert viewer.post(backfill_url(row), form).status_code == 403
    assert not Run.objects.exists() and not LogEntry.objects.exists()


def test_pause_resume_trigger__change_the_schedule_and_are_logged(declare, durable):
    task = declare("operated", Schedule(every=timedelta(minutes=1)))
    services()
    row = ScheduleState.objects.get(task_name=task.name)
    operator = client_with("view_schedulestate", "manage_schedule")
    operator.post(reverse(LIST), {"action": "pause", "_selected_action": [row.pk]})
    assert ScheduleState.objects.get(pk=row.pk).paused
    durable.clock.advance(timedelta(minutes=3))
    assert services() == [0, 0, 0]
    operator.post(reverse(LIST), {"action": "resume", "_selected_action": [row.pk]})
    row = ScheduleState.objects.get(pk=row.pk)
    assert not row.paused and row.next_tick_at == START + timedelta(minutes=4)
    operator.post(reverse(LIST), {"action": "trigger_now", "_selected_action": [row.pk]})
    (run,) = Run.objects.filter(task_name=task.name)
    assert ScheduleState.objects.get(pk=row.pk).last_run_id == run.id
    messages = list(LogEntry.objects.order_by("pk").values_list("change_message", flat=True))
    assert messages == ["Paused", "Resumed", f"Triggered (run {run.id})"]


def test_backfill__fires_each_tick_of_the_range_once(declare, durable):
    task = declare("backfilled", Schedule(cron="0 * * * *"))
    services()
    row = ScheduleState.objects.get(task_name=task.name)
    operator = client_with("view_schedulestate", "manage_schedule")
    assert "durable-backfill-form" in text(operator.get(backfill_url(row)))
    form = {"start": "2025-12-31 21:00:00", "end": "2025-12-31 23:30:00"}
    assert operator.post(backfill_url(row), form).status_code == 302
    assert operator.post(backfill_url(row), form).status_code == 302  # again: nothing new
    assert Run.objects.filter(task_name=task.name).count() == 3
    assert [e.change_message for e in LogEntry.objects.order_by("pk")][-1].endswith(": 0 run(s)")
    bad = text(operator.post(backfill_url(row), {"start": "2026-01-02 00:00:00", "end": "2026-01-01 00:00:00"}))
    assert "The start is after the end." in bad
    too_many = text(operator.post(backfill_url(row), {"start": "2020-01-01 00:00:00", "end": "2026-01-01 00:00:00"}))
    assert "ScheduleError" in too_many
    assert Run.objects.filter(task_name=task.name).count() == 3
