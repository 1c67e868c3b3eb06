"""The admin's "Limits" page: keys in use, backlog, override; editing needs ``set_limit``."""

import html

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from celery_durable import get_run
from celery_durable.models import Slot
from tests.testapp import flows

LIMITS = "admin:celery_durable_slot_changelist"


def change_url(slot):
    return reverse("admin:celery_durable_slot_change", args=[slot.pk])


def client_with(*perms):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    client = Client()
    client.force_login(user)
    return client, user


def test_limits_page__lists_keys_with_use_backlog_and_override(durable):
    calls = [flows.overridden.delay("x", n) for n in range(4)]
    flows.overridden.delay("y", 0)
    client, _user = client_with("view_slot")
    body = html.unescape(client.get(reverse(LIMITS)).content.decode())
    assert "f.overridden:k:x" in body and "f.overridden:k:y" in body
    row = body[body.index("f.overridden:k:x") :]
    row = row[: row.index("</tr>")]
    cells = [c.split(">")[-1] for c in row.split("</td>")[:-1]]
    assert cells == ["1", "1", "-", "1", "3"]  # in use, declared, no override, in force, backlog
    assert len(calls) == 4


def test_override__edited_by_a_user_with_the_permission_promotes_and_is_logged(durable):
    calls = [flows.overridden.delay("x", n) for n in range(4)]
    slot = Slot.objects.get(key="f.overridden:k:x")
    client, user = client_with("view_slot", "set_limit")
    response = client.post(change_url(slot), {"override": "3"})
    assert response.status_code == 302
    assert Slot.objects.get(pk=slot.pk).override == 3
    assert [get_run(r.id).status for r in calls] == ["queued", "queued", "queued", "pending"]
    entry = LogEntry.objects.get(user=user, object_id=str(slot.pk))
    assert entry.action_flag == CHANGE and entry.get_change_message() == "Override none -> 3"
    response = client.post(change_url(slot), {"override": ""})  # back to the declared limit
    assert response.status_code == 302
    assert Slot.objects.get(pk=slot.pk).override is None
    messages = LogEntry.objects.filter(user=user, object_id=str(slot.pk)).order_by("pk")
    assert [e.get_change_message() for e in messages] == ["Override none -> 3", "Override 3 -> none"]


def test_override__without_the_permission_is_refused_and_changes_nothing(durable):
    flows.overridden.delay("x", 0)
    slot = Slot.objects.get(key="f.overridden:k:x")
    client, _user = client_with("view_slot")
    response = client.post(change_url(slot), {"override": "5"})
    assert response.status_code == 403
    assert Slot.objects.get(pk=slot.pk).override is None
    assert not LogEntry.objects.exists()


def test_override__a_bad_value_is_refused_and_changes_nothing(durable):
    flows.overridden.delay("x", 0)
    slot = Slot.objects.get(key="f.overridden:k:x")
    client, _user = client_with("view_slot", "set_limit")
    for bad in ("0", "-1", "abc", "100000000"):
        response = client.post(change_url(slot), {"override": bad})
        assert response.status_code == 200  # the form again, with its error
        assert Slot.objects.get(pk=slot.pk).override is None
    assert not LogEntry.objects.exists()
