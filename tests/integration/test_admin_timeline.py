"""The run page's waterfall (steps as bars on one time axis) and the auto-refresh toggle."""

import html
import re
import uuid
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from celery_durable.models import Run, Step
from celery_durable.states import RunStatus, StepStatus
from tests.testapp import flows, tasks


def run_url(run_id):
    return reverse("admin:celery_durable_run_change", args=[run_id])


def bars(body):
    """{step label: (classes, left %, width %)} of the waterfall."""
    section = body[body.index('id="durable-waterfall"') :]
    section = section[: section.index("</section>")]
    found = re.findall(
        r'data-bar="([^"]+)">.*?class="durable-wf-bar ([^"]+)" style="left: ([\d.]+)%; width: ([\d.]+)%"',
        section,
        flags=re.S,
    )
    return {label: (classes, float(left), float(width)) for label, classes, left, width in found}


def test_waterfall__places_steps_on_one_time_axis(admin_client):
    t0 = timezone.now() - timedelta(hours=1)
    run = Run.objects.create(
        id=str(uuid.uuid4()),
        task_name="t.shop",
        status=RunStatus.COMPLETED,
        created_at=t0,
        started_at=t0,
        finished_at=t0 + timedelta(seconds=100),
    )

    def add(step_id, kind, start, end, status=StepStatus.COMPLETED, attempts=1):
        Step.objects.create(
            run=run,
            step_id=step_id,
            kind=kind,
            status=status,
            attempts=attempts,
            started_at=t0 + timedelta(seconds=start),
            finished_at=t0 + timedelta(seconds=end),
        )

    add("reserve", "run", 0, 10, attempts=3)
    add("cool-off", "sleep", 10, 60)
    add("paid", "wait", 60, 90)
    add("ship", "run", 90, 100)
    body = html.unescape(admin_client.get(run_url(run.id)).content.decode())
    drawn = bars(body)
    assert list(drawn) == ["reserve", "cool-off", "paid", "ship"]
    assert drawn["reserve"][1:] == (0.0, 10.0)
    assert drawn["cool-off"][1:] == (10.0, 50.0) and "durable-wf--sleep" in drawn["cool-off"][0]
    assert drawn["paid"][1:] == (60.0, 30.0) and "durable-wf--wait" in drawn["paid"][0]
    assert drawn["ship"][1:] == (90.0, 10.0)
    assert "3 attempts" in body
    assert not any("durable-wf--open" in classes for classes, _, _ in drawn.values())  # all bars closed


def test_waterfall__a_sleeping_run_has_an_open_bar_up_to_now(admin_client, durable):
    run_id = flows.sleepy.delay(3600).id
    durable.run_until_idle(advance_clock=False)
    durable.clock.advance(60)  # a minute into its hour of sleep
    drawn = bars(html.unescape(admin_client.get(run_url(run_id)).content.decode()))
    assert set(drawn) == {"before", "nap"}
    classes, left, width = drawn["nap"]
    assert "durable-wf--sleep" in classes and "durable-wf--open" in classes
    assert left == 0.0 and width == 100.0  # from its start to "now", the right end of the axis


def test_waterfall__no_steps_no_chart(admin_client):
    run_id = tasks.add.delay(1, 2).id
    body = admin_client.get(run_url(run_id)).content.decode()
    assert 'id="durable-waterfall"' not in body


def test_auto_refresh__on_by_default_and_can_be_turned_off(admin_client):
    run_id = tasks.add.delay(1, 2).id  # queued: unfinished
    changelist = reverse("admin:celery_durable_run_changelist")
    for url in (changelist, run_url(run_id)):
        body = html.unescape(admin_client.get(url).content.decode())
        assert "window.location.reload()" in body and "Turn off auto-refresh" in body
    toggle = reverse("admin:celery_durable_run_refresh")
    response = admin_client.get(toggle, {"on": "0", "next": changelist + "?status=queued"})
    assert response.status_code == 302 and response["Location"] == changelist + "?status=queued"
    for url in (changelist, run_url(run_id)):
        body = admin_client.get(url).content.decode()
        assert "window.location.reload()" not in body and "Auto-refresh is off" in body
    admin_client.get(toggle, {"on": "1", "next": changelist})
    assert "window.location.reload()" in admin_client.get(changelist).content.decode()


def test_auto_refresh__not_on_a_finished_run_and_never_redirects_offsite(admin_client, durable):
    run_id = tasks.add.delay(1, 2).id
    durable.run_until_idle()
    assert "window.location.reload()" not in admin_client.get(run_url(run_id)).content.decode()
    response = admin_client.get(reverse("admin:celery_durable_run_refresh"), {"on": "0", "next": "https://evil.test/"})
    assert response["Location"] == reverse("admin:celery_durable_run_changelist")
