"""The admin as control plane: changelist, run page, dashboard, actions, permissions, escaping."""

import json
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from celery_durable import NonRetriableError
from celery_durable.models import Run, Step
from celery_durable.states import RunStatus, StepStatus
from tests.testapp import tasks
from tests.testapp.models import BodyRun

CHANGELIST = "admin:celery_durable_run_changelist"


def run_url(run_id, name="change"):
    return reverse(f"admin:celery_durable_run_{name}", args=[run_id])


def make_runs(n, *, status=RunStatus.COMPLETED, task="t.add", steps=3, **fields):
    """Insert ``n`` runs with ``steps`` step rows each (monitoring fixtures, not executions)."""
    now = timezone.now()
    runs = [
        Run(
            id=str(uuid.uuid4()),
            task_name=task,
            status=status,
            created_at=now - timedelta(seconds=i),
            started_at=now - timedelta(seconds=i),
            finished_at=now if status in ("completed", "failed", "cancelled", "skipped") else None,
            **fields,
        )
        for i in range(n)
    ]
    Run.objects.bulk_create(runs)
    Step.objects.bulk_create(
        Step(
            run=run,
            step_id=f"s{j}",
            status=StepStatus.COMPLETED if j < steps - 1 else StepStatus.FAILED,
            output="1",
            started_at=now,
            finished_at=now,
        )
        for run in runs
        for j in range(steps)
    )
    return runs


def staff(username, *perms):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="celery_durable"))
    return user


@pytest.fixture
def viewer_client(db):
    client = Client()
    client.force_login(staff("viewer", "view_run"))
    return client


@pytest.fixture
def replayer_client(db):
    client = Client()
    client.force_login(staff("replayer", "view_run", "replay_run"))
    return client


def failed_run(durable, n=1):
    """A real run of t.three_steps that failed at step "two"."""
    durable.fail_step("t.three_steps", "two", NonRetriableError("card declined"))
    run = tasks.three_steps.delay(n)
    durable.run_until_idle()
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED
    return run.id


# --- changelist ------------------------------------------------------------------------------


def test_changelist__lists_runs_with_status_steps_and_duration(admin_client):
    make_runs(2, status=RunStatus.FAILED, steps=3)
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'class="durable-status durable-status--failed"' in body
    assert "2 / 3" in body  # steps done / recorded
    assert "Dashboard" in body


@pytest.mark.parametrize("count", [3, 60])
def test_changelist__query_count_does_not_grow_with_runs(admin_client, django_assert_max_num_queries, count):
    make_runs(count, steps=4)
    make_runs(2, status=RunStatus.FAILED, task="t.other")
    with django_assert_max_num_queries(8):
        response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    with django_assert_max_num_queries(8):
        assert admin_client.get(reverse(CHANGELIST), {"status": "failed", "task": "t.other"}).status_code == 200


def test_changelist__does_not_load_arguments_or_results(admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_runs(2)
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(reverse(CHANGELIST))
    sqls = [q["sql"].replace("`", '"') for q in queries.captured_queries]
    run_selects = [sql for sql in sqls if 'FROM "celery_durable_run"' in sql]
    assert run_selects
    for sql in run_selects:
        # Arguments only as a short prefix (the changelist's preview), never whole.
        whole = re.sub(r'SUBSTR(?:ING)?\("celery_durable_run"\."(?:args|kwargs)", 1, \d+\)', "", sql, flags=re.I)
        assert '"result"' not in whole and '"args"' not in whole and '"kwargs"' not in whole


def test_changelist__filters_by_status_task_and_creation_time(admin_client):
    old = make_runs(1, status=RunStatus.FAILED, task="t.a")[0]
    Run.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=3))
    new_failed = make_runs(1, status=RunStatus.FAILED, task="t.a")[0]
    other = make_runs(1, status=RunStatus.COMPLETED, task="t.b")[0]

    def listed(**params):
        body = admin_client.get(reverse(CHANGELIST), params).content.decode()
        return {run.id for run in (old, new_failed, other) if run.id in body}

    assert listed(status="failed") == {old.id, new_failed.id}
    assert listed(task="t.b") == {other.id}
    assert listed(created_since="24h") == {new_failed.id, other.id}
    day = (timezone.now() - timedelta(days=3)).date().isoformat()
    assert listed(created_from=day, created_to=day) == {old.id}
    assert listed(status="failed", created_since="24h") == {new_failed.id}


def test_changelist__invalid_date__redirects_with_error_flag(admin_client):
    response = admin_client.get(reverse(CHANGELIST), {"created_from": "yesterday-ish"})
    assert response.status_code == 302
    assert "e=1" in response["Location"]


def test_changelist__search_by_exact_run_id_or_task(admin_client):
    a, b = make_runs(2, task="t.search")
    c = make_runs(1, task="t.elsewhere")[0]
    body = admin_client.get(reverse(CHANGELIST), {"q": a.id}).content.decode()
    assert a.id in body and b.id not in body and c.id not in body
    body = admin_client.get(reverse(CHANGELIST), {"q": "t.elsewhere"}).content.decode()
    assert c.id in body and a.id not in body


def test_changelist__search_by_idempotency_key(admin_client, durable):
    from tests.testapp import flows

    run = flows.idempotent.delay(order_id="A-17")
    other = flows.idempotent.delay(order_id="B-2")
    body = admin_client.get(reverse(CHANGELIST), {"q": "A-17"}).content.decode()
    assert run.id in body and other.id not in body


def test_concurrency_keys__column_filter_search_run_page_and_dashboard(admin_client):
    from celery_durable.models import Slot

    now = timezone.now()
    Slot.objects.create(key="t.video:user-7", limit=1, in_use=1)
    video = {"task": "t.video", "steps": 0}
    holder = make_runs(1, status=RunStatus.RUNNING, slot_key1="t.video:user-7", holds_slots=True, **video)[0]
    waiting = [
        make_runs(
            1, status=RunStatus.PENDING, slot_key1="t.video:user-7", backlog_at=now + timedelta(seconds=i), **video
        )[0]
        for i in range(3)
    ]
    other = make_runs(1, status=RunStatus.PENDING, slot_key1="t.video:user-8", backlog_at=now, **video)[0]

    body = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert 'href="?key=t.video%3Auser-7"' in body
    body = admin_client.get(reverse(CHANGELIST), {"key": "t.video:user-7"}).content.decode()
    assert holder.id in body and waiting[0].id in body and other.id not in body
    assert "By concurrency key" in body
    body = admin_client.get(reverse(CHANGELIST), {"q": "user-8"}).content.decode()  # the key's value
    assert other.id in body and holder.id not in body

    body = admin_client.get(run_url(waiting[2].id)).content.decode()
    assert "1 of 1 slot in use; 2 pending runs ahead of this one" in body

    body = admin_client.get(reverse("admin:celery_durable_run_dashboard")).content.decode()
    table = body[body.index('id="durable-per-key"') :]
    assert table.index("t.video:user-7") < table.index("t.video:user-8")
    assert "1 / 1" in table


def test_changelist__has_no_delete_action(admin_client):
    body = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "delete_selected" not in body
    assert 'value="replay_failed_step"' in body and 'value="cancel_runs"' in body


# --- run page ------------------------------------------------------------------------------


def test_run_page__shows_the_failed_step_error_timeline_and_arguments(admin_client, durable):
    run_id = failed_run(durable, n=41)
    response = admin_client.get(run_url(run_id))
    assert response.status_code == 200
    body = response.content.decode()
    assert "NonRetriableError" in body and "card declined" in body
    assert "Traceback" in body
    timeline = body[body.index('id="durable-timeline"') :]
    assert re.search(r'data-step-id="one".*durable-status--completed', timeline, re.S)
    assert re.search(r'data-step-id="two".*durable-status--failed', timeline, re.S)
    assert "Replay from failed step" in body and "Replay from the start" in body
    assert "41" in body[body.index('id="durable-args"') :]


def test_run_page__unknown_run__404(admin_client):
    assert admin_client.get(run_url("no-such-run")).status_code == 404


def test_run_page__shows_parent_children_and_wait(admin_client):
    parent = make_runs(1, status=RunStatus.WAITING, steps=0, waiting_for="invoice.paid")[0]
    Step.objects.create(
        run=parent,
        step_id="fan-out",
        kind="gather",
        status=StepStatus.PENDING,
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    child = make_runs(1, status=RunStatus.RUNNING, task="t.child", steps=0, parent=parent, parent_step="fan-out")[0]
    body = admin_client.get(run_url(parent.id)).content.decode()
    assert child.id in body and "t.child" in body
    assert "waits for its child runs" in body and "invoice.paid" in body
    body = admin_client.get(run_url(child.id)).content.decode()
    assert "Parent run" in body and parent.id in body


def test_run_page__sleeping_run_shows_wake_time(admin_client):
    wake = timezone.now() + timedelta(hours=5)
    run = make_runs(1, status=RunStatus.SLEEPING, steps=0, wake_at=wake)[0]
    body = admin_client.get(run_url(run.id)).content.decode()
    assert wake.strftime("%Y-%m-%d %H:%M:%S") in body


def test_run_page__constant_query_count(admin_client, django_assert_max_num_queries):
    run = make_runs(1, steps=50)[0]
    # Session, user, run, steps, parent/children, batch calls, content type, history, forks.
    with django_assert_max_num_queries(9):
        assert admin_client.get(run_url(run.id)).status_code == 200


def test_output_preview__is_truncated(admin_client):
    run = make_runs(1, steps=0)[0]
    now = timezone.now()
    Step.objects.create(
        run=run, step_id="big", status="completed", output='"' + "x" * 5000 + '"', started_at=now, finished_at=now
    )
    body = admin_client.get(run_url(run.id)).content.decode()
    assert "x" * 150 in body and "x" * 400 not in body and "…" in body


# --- escaping ----------------------------------------------------------------------------------

SCRIPT = "<script>alert('pwned')</script>"


def test_malicious_content__is_escaped_on_every_page(admin_client):
    error = json.dumps({"type": "ValueError", "module": "x", "message": SCRIPT, "traceback": SCRIPT})
    run = make_runs(
        1, status=RunStatus.FAILED, task=f"t.{SCRIPT}", steps=0, args=f'["{SCRIPT}"]', error=error, waiting_for=SCRIPT
    )[0]
    now = timezone.now()
    Step.objects.create(
        run=run, step_id=SCRIPT, status="completed", output=f'"{SCRIPT}"', started_at=now, finished_at=now
    )
    Step.objects.create(run=run, step_id="bad", status="failed", error=error, started_at=now, finished_at=now)
    for url in (reverse(CHANGELIST), run_url(run.id), reverse("admin:celery_durable_run_dashboard")):
        body = admin_client.get(url).content.decode()
        assert "<script>alert" not in body, url
    body = admin_client.get(run_url(run.id)).content.decode()
    assert "&lt;script&gt;" in body


# --- single-run actions ----------------------------------------------------------------------


def test_replay_from_failed_step__keeps_completed_steps(admin_client, durable):
    run_id = failed_run(durable)
    response = admin_client.post(run_url(run_id, "replay"), {"from": "failed"})
    assert response.status_code == 302 and response["Location"] == run_url(run_id)
    assert Run.objects.get(id=run_id).status == RunStatus.QUEUED
    durable.run_until_idle()
    assert durable.result(run_id) == 7
    assert BodyRun.objects.filter(run_id=run_id, step="one").count() == 1  # not re-run
    body = admin_client.get(run_url(run_id)).content.decode()
    assert "replayed from the failed step" in body


def test_replay_from_start__reruns_every_step(admin_client, durable):
    run_id = failed_run(durable)
    admin_client.post(run_url(run_id, "replay"), {"from": "start"})
    durable.run_until_idle()
    assert durable.result(run_id) == 7
    assert BodyRun.objects.filter(run_id=run_id, step="one").count() == 2


def test_replay_from_a_given_step(admin_client, durable):
    run_id = failed_run(durable)
    admin_client.post(run_url(run_id, "replay"), {"from": "step", "step_id": "one"})
    durable.run_until_idle()
    assert durable.result(run_id) == 7
    assert BodyRun.objects.filter(run_id=run_id, step="one").count() == 2


def test_replay_of_a_completed_run__is_refused_with_a_message(admin_client, durable):
    run = tasks.add.delay(1, 2)
    durable.run_until_idle()
    response = admin_client.post(run_url(run.id, "replay"), {"from": "failed"}, follow=True)
    assert "Not replayed" in response.content.decode()
    assert Run.objects.get(id=run.id).status == RunStatus.COMPLETED


def test_cancel__cancels_a_queued_run(admin_client, durable):
    run = tasks.add.delay(1, 2)
    response = admin_client.post(run_url(run.id, "cancel"), {"reason": "bad deploy", "confirmed": "yes"}, follow=True)
    assert response.status_code == 200
    stored = Run.objects.get(id=run.id)
    assert stored.status == RunStatus.CANCELLED
    assert stored.cancel_reason == "bad deploy"
    assert "cancelled" in response.content.decode()


def test_actions__are_not_reachable_by_get(admin_client, durable):
    run_id = failed_run(durable)
    assert admin_client.get(run_url(run_id, "replay")).status_code == 405
    assert Run.objects.get(id=run_id).status == RunStatus.FAILED
    queued = tasks.add.delay(1, 2).id
    assert admin_client.get(run_url(queued, "cancel")).status_code == 200  # the confirmation page
    assert Run.objects.get(id=queued).status == RunStatus.QUEUED


def test_actions__need_a_csrf_token(durable, admin_user):
    run_id = failed_run(durable)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(run_url(run_id, "replay"), {"from": "failed"}).status_code == 403
    bulk = {"action": "replay_failed_step", "_selected_action": [run_id]}
    assert client.post(reverse(CHANGELIST), bulk).status_code == 403
    assert Run.objects.get(id=run_id).status == RunStatus.FAILED


# --- permissions ---------------------------------------------------------------------------


def test_view_only_user__sees_no_actions_and_gets_403(viewer_client, durable):
    run_id = failed_run(durable)
    body = viewer_client.get(reverse(CHANGELIST)).content.decode()
    assert run_id in body
    assert "replay_failed_step" not in body and "cancel_runs" not in body
    body = viewer_client.get(run_url(run_id)).content.decode()
    assert "Replay from failed step" not in body and "Cancel run" not in body
    assert viewer_client.post(run_url(run_id, "replay"), {"from": "failed"}).status_code == 403
    assert viewer_client.post(run_url(run_id, "cancel")).status_code == 403
    response = viewer_client.post(
        reverse(CHANGELIST), {"action": "replay_failed_step", "_selected_action": [run_id], "confirmed": "yes"}
    )
    assert response.status_code in (200, 302)
    assert Run.objects.get(id=run_id).status == RunStatus.FAILED
    assert viewer_client.get(reverse("admin:celery_durable_run_dashboard")).status_code == 200


def test_replay_permission_without_cancel(replayer_client, durable):
    run_id = failed_run(durable)
    queued = tasks.add.delay(1, 2)
    body = replayer_client.get(reverse(CHANGELIST)).content.decode()
    assert "replay_failed_step" in body and "cancel_runs" not in body
    assert replayer_client.post(run_url(queued.id, "cancel")).status_code == 403
    assert replayer_client.post(run_url(run_id, "replay"), {"from": "failed"}).status_code == 302
    assert Run.objects.get(id=run_id).status == RunStatus.QUEUED


def test_user_without_view_permission__gets_403(db, client):
    client.force_login(staff("nobody", "replay_run", "cancel_run"))
    run = make_runs(1, status=RunStatus.FAILED)[0]
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(run_url(run.id)).status_code == 403
    assert client.get(reverse("admin:celery_durable_run_dashboard")).status_code == 403
    assert client.post(run_url(run.id, "replay"), {"from": "failed"}).status_code == 403
    assert client.post(run_url(run.id, "cancel")).status_code == 403
    assert Run.objects.get(id=run.id).status == RunStatus.FAILED


# --- bulk actions ------------------------------------------------------------------------------


def test_bulk_replay__confirms_with_counts_then_skips_what_cannot_be_replayed(admin_client, durable):
    failed = [failed_run(durable, n=i) for i in range(3)]
    done = tasks.add.delay(1, 2)
    durable.run_until_idle()
    selected = [*failed, done.id]
    response = admin_client.post(
        reverse(CHANGELIST), {"action": "replay_failed_step", "index": "0", "_selected_action": selected}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert re.search(r'id="durable-eligible">3<', body)
    assert "1 selected run will be skipped (1 completed)" in body
    assert all(Run.objects.get(id=i).status == RunStatus.FAILED for i in failed)  # nothing yet

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "replay_failed_step", "_selected_action": selected, "confirmed": "yes", "select_across": "0"},
        follow=True,
    )
    body = response.content.decode()
    assert "3 run(s) replayed." in body
    assert "Skipped 1 run(s): 1 completed." in body
    assert all(Run.objects.get(id=i).status == RunStatus.QUEUED for i in failed)
    assert Run.objects.get(id=done.id).status == RunStatus.COMPLETED
    durable.run_until_idle()
    assert all(durable.result(i) == 2 * (i_n + 1) + 3 for i_n, i in enumerate(failed))


def test_bulk_replay_from_start__across_all_filtered_pages(admin_client, durable):
    failed = [failed_run(durable, n=i) for i in range(2)]
    response = admin_client.post(
        reverse(CHANGELIST) + "?status=failed",
        {
            "action": "replay_from_start",
            "_selected_action": failed[:1],
            "select_across": "1",
            "confirmed": "yes",
        },
        follow=True,
    )
    assert "2 run(s) replayed from the start." in response.content.decode()
    durable.run_until_idle()
    assert BodyRun.objects.filter(run_id__in=failed, step="one").count() == 4


def test_bulk_cancel__cancels_unfinished_and_skips_finished(admin_client, durable):
    queued = [tasks.add.delay(i, 1).id for i in range(2)]
    done = make_runs(1)[0]
    selected = [*queued, done.id]
    ask = {"action": "cancel_runs", "index": "0", "_selected_action": selected}
    response = admin_client.post(reverse(CHANGELIST), ask)
    body = response.content.decode()
    assert re.search(r'id="durable-eligible">2<', body) and 'name="reason"' in body
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "cancel_runs", "_selected_action": selected, "confirmed": "yes", "reason": "incident 42"},
        follow=True,
    )
    body = response.content.decode()
    assert "2 run(s) cancelled" in body and "Skipped 1 run(s): 1 completed." in body
    assert {Run.objects.get(id=i).status for i in queued} == {RunStatus.CANCELLED}


def test_bulk_confirmation__with_nothing_eligible(admin_client):
    done = make_runs(2)
    response = admin_client.post(
        reverse(CHANGELIST), {"action": "replay_failed_step", "index": "0", "_selected_action": [r.id for r in done]}
    )
    body = response.content.decode()
    assert "Nothing to do" in body and 'name="confirmed"' not in body


# --- dashboard ---------------------------------------------------------------------------------


def test_dashboard__shows_counts_chart_backlog_and_due_sleepers(admin_client, django_assert_max_num_queries):
    make_runs(3, status=RunStatus.COMPLETED, task="t.a")
    make_runs(2, status=RunStatus.FAILED, task="t.a")
    backlog = make_runs(4, status=RunStatus.QUEUED, task="t.b", steps=0)
    sleeper = make_runs(
        1, status=RunStatus.SLEEPING, task="t.c", steps=0, wake_at=timezone.now() + timedelta(minutes=10)
    )[0]
    with django_assert_max_num_queries(12):
        response = admin_client.get(reverse("admin:celery_durable_run_dashboard"))
    assert response.status_code == 200
    body = response.content.decode()
    assert '<svg class="durable-chart"' in body
    assert 'id="durable-backlog-total">4<' in body
    oldest = min(backlog, key=lambda r: r.created_at)
    assert oldest.id[:20] in body
    assert sleeper.id[:20] in body
    table = body[body.index('id="durable-per-task"') :]
    assert "t.a" in table and "t.b" in table
    assert 'class="durable-bar-failed"' in body
    assert "celery_durable/admin.css" in body and "https://" not in body.split("<body", 1)[1].split("</svg>")[0]


# --- counts on PostgreSQL ------------------------------------------------------------------------


def test_changelist__estimates_large_counts_on_postgresql(admin_client, monkeypatch):
    from django.db import connection

    from celery_durable.admin import changelist

    if connection.vendor != "postgresql":
        pytest.skip("estimated counts are a PostgreSQL feature; other databases count exactly")
    make_runs(12, steps=0, task="t.many")
    make_runs(3, steps=0, task="t.few")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE celery_durable_run")
    monkeypatch.setattr(changelist, "EXACT_COUNT_LIMIT", 5)
    body = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "about</span> 15 runs" in body  # pg_class.reltuples after ANALYZE
    body = admin_client.get(reverse(CHANGELIST), {"task": "t.many"}).content.decode()
    assert "about</span>" in body  # more than the exact limit: the planner's estimate
    body = admin_client.get(reverse(CHANGELIST), {"task": "t.few"}).content.decode()
    assert "about" not in body and "3 runs" in body  # under the limit: exact


# --- real suspended runs ---------------------------------------------------------------------


def test_run_page__real_sleep_wait_and_children(admin_client, durable):
    from tests.testapp import flows

    sleeper = flows.sleepy.delay(3600).id
    waiter = flows.confirm.delay(770077).id  # a user id no other test sends an event for
    parent = flows.parent.delay(2).id
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.get(id=sleeper).status == RunStatus.SLEEPING
    assert Run.objects.get(id=waiter).status == RunStatus.WAITING

    body = admin_client.get(run_url(sleeper)).content.decode()
    nap = body[body.index('data-step-id="nap"') :]
    assert "sleep" in nap[:400] and "sleeps until" in nap
    body = admin_client.get(run_url(waiter)).content.decode()
    assert "waits for event" in body and "user.confirmed" in body
    body = admin_client.get(run_url(parent)).content.decode()
    child = Run.objects.filter(parent_id=parent).first()
    assert child is not None and child.id in body and "Child runs" in body

    body = admin_client.get(reverse("admin:celery_durable_run_dashboard")).content.decode()
    assert sleeper[:20] in body  # due within the hour
