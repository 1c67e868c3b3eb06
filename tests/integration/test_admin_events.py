"""The events pages: recent events, what each started or resumed, and the "send event" form."""

import html
from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from celery_durable import send_event
from celery_durable.models import Event, Run
from celery_durable.states import RunStatus
from tests.testapp import flows

EVENTS = "admin:celery_durable_event_changelist"
SEND = "admin:celery_durable_event_send"


def event_url(event_pk):
    return reverse("admin:celery_durable_event_change", args=[event_pk])


def text(response):
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def section(body, anchor):
    part = body[body.index(f'id="{anchor}"') :]
    return part[: part.index("</section>")]


def client_with(*perms):
    user = User.objects.create_user("sender", password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    client = Client()
    client.force_login(user)
    return client


def test_events_list__every_event_with_readable_data(admin_client):
    send_event("order.paid", {"order_id": 17, "at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)})
    send_event("nobody.listens", {"x": 1})  # matches nothing: still on the list
    body = text(admin_client.get(reverse(EVENTS)))
    assert "order.paid" in body and "nobody.listens" in body
    assert "2024-01-02T03:04:05+00:00" in body and "__type__" not in body
    body = text(admin_client.get(reverse(EVENTS), {"name": "order.paid"}))
    assert "order.paid" in body and "nobody.listens" not in body


def test_event_page__the_run_it_started_and_the_wait_it_resumed(admin_client, durable):
    waiter = flows.confirm.delay(880001).id
    other = flows.confirm.delay(880002).id
    durable.run_until_idle(advance_clock=False)
    send_event("user.confirmed", {"user_id": 880001})
    row = Event.objects.get(name="user.confirmed")
    assert Run.objects.get(id=waiter).status == RunStatus.QUEUED
    body = text(admin_client.get(event_url(row.pk)))
    resumed = section(body, "durable-event-resumed")
    assert waiter in resumed and "step <code>confirmation</code>" in resumed and other not in resumed
    waiting = section(body, "durable-event-waiting")  # the one still waiting, with its match
    assert other[:20] in waiting and '{"user_id": 880002}' in waiting

    send_event("user.signed_up", {"user_id": 5})
    signup = Event.objects.get(name="user.signed_up")
    started = Run.objects.get(task_name="f.on_signup")
    body = text(admin_client.get(event_url(signup.pk)))
    assert started.id in section(body, "durable-event-started")
    assert "None: no run was waiting" in section(body, "durable-event-resumed")


def test_send_event_form__sends_through_the_api_and_is_recorded(durable):
    waiter = flows.confirm.delay(880003).id
    durable.run_until_idle(advance_clock=False)
    client = client_with("view_event", "send_event")
    body = text(client.get(reverse(EVENTS)))
    assert 'id="durable-send-event"' in body
    response = client.post(reverse(SEND), {"name": "user.confirmed", "payload": '{"user_id": 880003}', "id": "form-1"})
    row = Event.objects.get(event_id="form-1")
    assert response.status_code == 302 and response["Location"] == event_url(row.pk)
    assert row.data_value == {"user_id": 880003}
    assert Run.objects.get(id=waiter).status == RunStatus.QUEUED  # resumed, as send_event() does
    entry = LogEntry.objects.get(object_id=str(row.pk))
    assert entry.user.username == "sender" and entry.action_flag == ADDITION
    # The same id again: nothing sent twice, and the form says so.
    response = client.post(reverse(SEND), {"name": "user.confirmed", "payload": "{}", "id": "form-1"}, follow=True)
    assert "was already sent" in text(response)
    assert Event.objects.filter(name="user.confirmed").count() == 1
    assert LogEntry.objects.filter(object_id=str(row.pk)).count() == 1


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"name": "x", "payload": "{not json"}, "Not valid JSON"),
        ({"name": "x", "payload": "[1, 2]"}, "must be a JSON object"),
        ({"name": "   ", "payload": "{}"}, "This field is required"),
        ({"name": "x\x00y", "payload": "{}"}, "Null characters are not allowed"),
    ],
)
def test_send_event_form__bad_input_changes_nothing(db, fields, error):
    client = client_with("view_event", "send_event")
    body = text(client.post(reverse(SEND), fields))
    assert error in body
    assert Event.objects.count() == 0


def test_send_event_form__needs_the_send_permission(db):
    client = client_with("view_event")
    assert 'id="durable-send-event"' not in text(client.get(reverse(EVENTS)))
    assert client.get(reverse(SEND)).status_code == 403
    assert client.post(reverse(SEND), {"name": "a", "payload": "{}"}).status_code == 403
    assert Event.objects.count() == 0


def test_events__undeclared_lookups_and_bad_ids(admin_client):
    send_event("a.b", {"secret": 1})
    assert admin_client.get(reverse(EVENTS), {"data__contains": "secret"}).status_code == 400
    response = admin_client.get(reverse(EVENTS), {"name": "a\x00b"})
    assert response.status_code in (200, 302)
    assert admin_client.get(reverse(EVENTS), {"q": "a\x00"}).status_code == 200
    assert admin_client.get(reverse("admin:celery_durable_event_change", args=["abc"])).status_code == 404
    assert admin_client.get(reverse("admin:celery_durable_event_change", args=["9\x00"])).status_code == 404
