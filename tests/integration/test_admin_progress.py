"""The run page says what a run is doing now: the step in progress, a wait in words, slot holders."""

import html

from django.test import Client
from django.urls import reverse

from celery_durable import durable_task, step
from celery_durable.models import Run
from celery_durable.states import RunStatus
from tests.testapp import flows

#: Pages fetched from inside a step while it executes (the probe below).
SEEN: list[str] = []
PROBE: dict[str, Client] = {}


def run_url(run_id):
    return reverse("admin:celery_durable_run_change", args=[run_id])


def page(client, run_id):
    response = client.get(run_url(run_id))
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def look_at_myself():
    SEEN.append(page(PROBE["client"], step.run_id))
    return "looked"


@durable_task(name="t.admin_probe")
def probe():
    step.run("charge", lambda: 1)
    return step.run("ship", look_at_myself)


def test_running_run__shows_the_step_in_progress_and_its_worker(admin_client, durable):
    SEEN.clear()
    PROBE["client"] = admin_client
    run_id = probe.delay().id
    durable.run_until_idle()
    assert Run.objects.get(id=run_id).status == RunStatus.COMPLETED
    (body,) = SEEN  # the page as it was while step "ship" executed
    assert "No step recorded yet" not in body
    now = body[body.index('id="durable-in-progress"') :]
    now = now[: now.index("</p>")]
    assert "executing the step after <code>charge</code>" in now
    assert "on worker <code>" in now and " since " in now
    # once finished, there is nothing in progress
    assert 'id="durable-in-progress"' not in page(admin_client, run_id)


def test_running_run_before_its_first_checkpoint(admin_client, durable):
    @durable_task(name="t.admin_probe_first")
    def first():
        return step.run("only", look_at_myself)

    SEEN.clear()
    PROBE["client"] = admin_client
    first.delay()
    durable.run_until_idle()
    (body,) = SEEN
    assert "executing, before its first checkpoint" in body
    assert "No checkpoint yet: the first step is executing." in body


def test_waiting_run__shows_event_match_and_deadline_in_words(admin_client, durable):
    run_id = flows.confirm.delay(770078, timeout=3600).id
    durable.run_until_idle(advance_clock=False)
    run = Run.objects.get(id=run_id)
    assert run.status == RunStatus.WAITING
    body = page(admin_client, run_id)
    deadline = run.wake_at.strftime("%Y-%m-%d %H:%M:%S")
    now = body[body.index('id="durable-in-progress"') :]
    now = now[: now.index("</p>")]
    assert "step <code>confirmation</code> waits for event <code>user.confirmed</code>" in now
    assert 'whose data matches <code>{"user_id": 770078}</code>' in now
    assert f"gives up at {deadline}" in now
    assert "sleeps until" not in body  # the timeout is not a sleep
    assert f'Gives up at</dt><dd id="durable-wake-at">{deadline}' in body


def test_waiting_run_after_its_timeout__says_it_timed_out(admin_client, durable):
    run_id = flows.confirm.delay(770079, timeout=60).id
    durable.run_until_idle()  # the fake clock jumps to the deadline
    assert Run.objects.get(id=run_id).result_value == "expired"
    body = page(admin_client, run_id)
    assert "timed out at" in body and "no event <code>user.confirmed</code>" in body


def test_sleeping_run__says_until_when(admin_client, durable):
    run_id = flows.sleepy.delay(3600).id
    durable.run_until_idle(advance_clock=False)
    body = page(admin_client, run_id)
    now = body[body.index('id="durable-in-progress"') :]
    assert "step <code>nap</code> sleeps until" in now[: now.index("</p>")]


def test_pending_run__links_to_the_runs_holding_its_slots(admin_client, durable):
    holder = flows.per_user.delay(5).id  # takes the key's only slot (queued, not yet executed)
    waiting = flows.per_user.delay(5).id
    assert Run.objects.get(id=holder).holds_slots
    assert Run.objects.get(id=waiting).status == RunStatus.PENDING
    body = page(admin_client, waiting)
    holders = body[body.index('id="durable-slot-holders"') :]
    holders = holders[: holders.index("</dd>")]
    assert f'href="{run_url(holder)}"' in holders and "f.per_user" in holders
    assert 'id="durable-slot-holders"' not in page(admin_client, holder)  # only a pending run waits behind


def test_dashboard__counts_waiting_runs_apart_from_the_backlog(admin_client, durable):
    run_id = flows.confirm.delay(770080, timeout=3600).id
    durable.run_until_idle(advance_clock=False)
    assert Run.objects.get(id=run_id).status == RunStatus.WAITING
    body = html.unescape(admin_client.get(reverse("admin:celery_durable_run_dashboard")).content.decode())
    backlog = body[body.index('id="durable-oldest-backlog"') :]
    assert "the backlog is empty (no pending or queued run)" in backlog[: backlog.index("</div>")]
    suspended = body[body.index('id="durable-suspended"') :]
    suspended = suspended[: suspended.index("</div>")]
    assert '?status=waiting">1</a>' in suspended
    assert f'href="{run_url(run_id)}"' in suspended and "<code>user.confirmed</code>" in suspended
