"""The changelist's search and its URL: id prefixes, keys by value, opt-in argument search,
declared filters only, and no 500 for a NUL anywhere (PostgreSQL refuses NUL in a query)."""

import html
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from celery_durable.admin.dashboard import key_backlogs
from celery_durable.admin.search import concurrency_keys
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.testapp import flows, tasks

CHANGELIST = "admin:celery_durable_run_changelist"


def listed(client, **params):
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def make_run(run_id, **fields):
    now = timezone.now()
    fields = {"task_name": "t.add", "status": RunStatus.COMPLETED, "created_at": now, **fields}
    return Run.objects.create(id=run_id, **fields)


def test_search__by_run_id_prefix(admin_client):
    one = make_run("5f3a9c1e-0000-4000-8000-000000000001")
    two = make_run("5f3a9c1e-0000-4000-8000-000000000002")
    other = make_run("9d0b7e2a-0000-4000-8000-000000000003")
    body = listed(admin_client, q="5f3a9c1e")
    assert one.id in body and two.id in body and other.id not in body
    body = listed(admin_client, q="5f3")  # too short to be taken as a prefix
    assert one.id not in body


def test_search__concurrency_key_by_its_value_alone(admin_client, durable):
    mine = flows.per_user.delay(41).id  # stored key: "f.per_user:user_id:41"
    theirs = flows.per_user.delay(42).id
    assert Run.objects.get(id=mine).slot_key1 == "f.per_user:user_id:41"
    body = listed(admin_client, q="41")
    assert mine in body and theirs not in body


def test_concurrency_keys__every_stored_form_of_a_value():
    keys = concurrency_keys("7", ["t.add"])
    assert "f.per_user:user_id:7" in keys  # per task, by parameter path
    assert "api-quota:7" in keys  # scope="global", by name
    assert "7" in keys and "t.add:7" in keys


def test_search__arguments_only_when_enabled(admin_client, settings):
    run = tasks.add.delay("alice@example.com", "Zoë").id
    other = tasks.add.delay("bob@example.com", "x").id
    assert run not in listed(admin_client, q="alice@example.com")  # off by default: no scan
    settings.CELERY_DURABLE = {**settings.CELERY_DURABLE, "ADMIN_ARGUMENT_SEARCH": True}
    body = listed(admin_client, q="alice@example.com")
    assert run in body and other not in body
    assert run in listed(admin_client, q="Zoë")  # stored JSON-escaped, found as typed


@pytest.mark.parametrize("lookup", ["args__regex", "error__contains", "lease_owner", "id__startswith", "status__in"])
def test_changelist__refuses_undeclared_lookups(admin_client, lookup):
    make_run(str(uuid.uuid4()))
    response = admin_client.get(reverse(CHANGELIST), {lookup: "x"})
    assert response.status_code == 400


def test_changelist__declared_filters_still_work(admin_client):
    failed = make_run(str(uuid.uuid4()), status=RunStatus.FAILED)
    done = make_run(str(uuid.uuid4()))
    for params in ({"status": "failed"}, {"status__exact": "failed"}):
        body = listed(admin_client, **params)
        assert failed.id in body and done.id not in body


@pytest.mark.parametrize(
    "params",
    [
        {"task": "t.a\x00dd"},
        {"key": "k\x00"},
        {"status__exact": "fail\x00ed"},
        {"q": "ab\x00cd"},
        {"created_from": "\x00"},
    ],
)
def test_changelist__nul_in_a_filter_is_not_a_500(admin_client, params):
    make_run(str(uuid.uuid4()))
    response = admin_client.get(reverse(CHANGELIST), params)
    assert response.status_code in (200, 302)
    if response.status_code == 302:
        assert "e=1" in response["Location"]


@pytest.mark.parametrize("view", ["change", "cancel", "history"])
def test_run_urls__nul_in_the_id_is_a_404(admin_client, view):
    response = admin_client.get(reverse(f"admin:celery_durable_run_{view}", args=["abc\x00def"]))
    assert response.status_code in (302, 404)  # the change view redirects for a missing object
    assert admin_client.post(reverse("admin:celery_durable_run_replay", args=["a\x00"])).status_code == 404


def test_bulk_selection__nul_changes_nothing(admin_client):
    run = make_run(str(uuid.uuid4()), status=RunStatus.FAILED)
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "replay_failed_step", "_selected_action": [run.id, "x\x00y"], "confirmed": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    assert "No run has an id with a NUL character" in response.content.decode()
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED


def test_dashboard__key_backlogs_reads_only_the_longest(db):
    now = timezone.now()
    for key, n in (("k:a", 3), ("k:b", 1), ("k:c", 5), ("k:d", 2)):
        for _ in range(n):
            make_run(str(uuid.uuid4()), status=RunStatus.PENDING, slot_key1=key, backlog_at=now)
    top = key_backlogs(limit=2)
    assert [(e["key"], e["pending"]) for e in top] == [("k:c", 5), ("k:a", 3)]
