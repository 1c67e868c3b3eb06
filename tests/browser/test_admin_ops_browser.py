"""The operator's admin in headless Chromium: the step in progress, the waterfall, a wait in
words, cancel with confirmation and its history, auto-refresh, events and "send event",
and a changelist that fits 1,400 px.

Screenshots go to ``$DURABLE_SCREENSHOT_DIR`` (``docs/img`` for the docs), else to the
test's temporary directory.
"""

import itertools
import uuid
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from celery_durable import send_event
from celery_durable.models import Event, Run, Step
from celery_durable.serialization import dumps
from celery_durable.states import RunStatus, StepStatus
from celery_durable.testing import DurableTestRunner
from tests.browser.test_admin_browser import screenshots
from tests.testapp import flows, tasks

PASSWORD = "correct horse battery"


def log_in(browser, server, *, refresh=False):
    User.objects.create_superuser("ops", "ops@example.com", PASSWORD)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{server.url}/admin/login/?next=/admin/celery_durable/run/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    if not refresh:  # pages that do not reload under the test's feet
        page.click("#durable-refresh-off")
        page.wait_for_selector("#durable-refresh-on")
    return page


def run_path(run_id):
    return f"/admin/celery_durable/run/{run_id}/change/"


def checkout_run():
    """A finished run whose steps took real time: a retried step, a sleep, a wait, a send."""
    t0 = timezone.now() - timedelta(hours=2)
    run = Run.objects.create(
        id=str(uuid.uuid4()),
        task_name="shop.checkout",
        status=RunStatus.COMPLETED,
        args='[{"order_id": 1017}]',
        result='{"shipped": true}',
        created_at=t0,
        started_at=t0,
        finished_at=t0 + timedelta(minutes=95),
        executions=4,
    )
    plan = [
        ("reserve-stock", "run", 0, 4, 1),
        ("charge-card", "run", 4, 9, 3),
        ("cool-off", "sleep", 9, 39, 1),
        ("payment-confirmed", "wait", 39, 80, 1),
        ("ship", "run", 80, 92, 1),
        ("receipt", "send_event", 92, 95, 1),
    ]
    outputs = {
        "cool-off": {"wake_at": t0 + timedelta(minutes=39)},
        "payment-confirmed": {
            "name": "payment.confirmed",
            "match": {"order_id": 1017},
            "timeout_at": t0 + timedelta(hours=24),
            "event": {
                "name": "payment.confirmed",
                "data": {"order_id": 1017},
                "id": "psp-88121",
                "received_at": t0 + timedelta(minutes=80),
            },
        },
    }
    for step_id, kind, start, end, attempts in plan:
        Step.objects.create(
            run=run,
            step_id=step_id,
            kind=kind,
            status=StepStatus.COMPLETED,
            attempts=attempts,
            output=dumps(outputs.get(step_id, {"ok": True}), "output"),
            started_at=t0 + timedelta(minutes=start),
            finished_at=t0 + timedelta(minutes=end),
        )
    return run.id


def running_run():
    """A run a worker executes now: one checkpoint done, the next step in progress."""
    now = timezone.now()
    run = Run.objects.create(
        id=str(uuid.uuid4()),
        task_name="video.transcode",
        status=RunStatus.RUNNING,
        lease_owner="celery@worker-3:1234",
        lease_expires_at=now + timedelta(seconds=30),
        created_at=now - timedelta(minutes=3),
        started_at=now - timedelta(minutes=3),
        executions=1,
    )
    Step.objects.create(
        run=run,
        step_id="download",
        status=StepStatus.COMPLETED,
        output='"s3://bucket/in.mp4"',
        started_at=now - timedelta(minutes=3),
        finished_at=now - timedelta(minutes=2),
    )
    return run.id


def test_run_pages_of_an_operator(admin_server, browser, tmp_path):
    shots = screenshots(tmp_path)
    checkout = checkout_run()
    running = running_run()
    with DurableTestRunner() as runner:
        waiting = flows.confirm.delay(990001, timeout=3600).id
        runner.run_until_idle(advance_clock=False)
    assert Run.objects.get(id=waiting).status == RunStatus.WAITING
    page = log_in(browser, admin_server)

    # The step in progress, with its worker.
    page.goto(admin_server.url + run_path(running))
    now = page.locator("#durable-in-progress").inner_text()
    assert "executing the step after download" in now and "celery@worker-3:1234" in now
    assert page.locator(".durable-wf-bar.durable-wf--open").count() == 1  # the bar of the step executing now
    page.screenshot(path=str(shots / "admin-run-in-progress.png"), full_page=True)

    # The waterfall of a finished run: one bar per step, in order, on one axis.
    page.goto(admin_server.url + run_path(checkout))
    bars = page.locator("#durable-waterfall .durable-wf-bar")
    assert bars.count() == 6
    boxes = [bars.nth(i).bounding_box() for i in range(6)]
    assert all(a["x"] < b["x"] for a, b in itertools.pairwise(boxes))
    sleep = page.locator("[data-bar='cool-off'] .durable-wf-bar").bounding_box()
    ship = page.locator("[data-bar='ship'] .durable-wf-bar").bounding_box()
    assert sleep["width"] > 2 * ship["width"]  # 30 minutes against 12
    assert "3 attempts" in page.locator("[data-bar='charge-card']").inner_text()
    page.screenshot(path=str(shots / "admin-run-waterfall.png"), full_page=True)

    # A wait in words; cancel asks first, then the history says who did it.
    page.goto(admin_server.url + run_path(waiting))
    words = page.locator("#durable-in-progress").inner_text()
    assert "waits for event user.confirmed" in words and '{"user_id": 990001}' in words and "gives up at" in words
    page.screenshot(path=str(shots / "admin-run-waiting.png"), full_page=True)
    page.click("#durable-cancel")
    page.wait_for_selector("#durable-cancel-question")
    assert Run.objects.get(id=waiting).status == RunStatus.WAITING  # nothing happened yet
    page.fill("input[name=reason]", "customer asked <b>twice</b>")
    page.screenshot(path=str(shots / "admin-cancel-confirm.png"))
    page.click("#durable-cancel-confirm")
    page.wait_for_selector("text=cancelled.")
    assert Run.objects.get(id=waiting).status == RunStatus.CANCELLED
    history = page.locator("#durable-history").inner_text()
    assert "ops" in history and "Cancelled (reason: customer asked <b>twice</b>)" in history
    page.close()


def test_auto_refresh_shows_a_change_by_itself_and_turns_off(admin_server, browser):
    run_id = tasks.add.delay(1, 2).id  # queued
    page = log_in(browser, admin_server, refresh=True)
    page.goto(admin_server.url + run_path(run_id))
    assert page.locator("#durable-run-status").inner_text() == "queued"
    Run.objects.filter(id=run_id).update(status=RunStatus.RUNNING, lease_owner="celery@w1", started_at=timezone.now())
    page.wait_for_function(
        "document.querySelector('#durable-run-status').innerText === 'running'", timeout=20_000
    )  # reloaded by itself
    page.click("#durable-refresh-off")
    page.wait_for_selector("#durable-refresh-on")
    Run.objects.filter(id=run_id).update(status=RunStatus.QUEUED)
    page.wait_for_timeout(7_000)  # longer than one refresh period: the page must stay as it was
    assert page.locator("#durable-run-status").inner_text() == "running"
    page.close()


def test_events_and_send_event(admin_server, browser, tmp_path):
    shots = screenshots(tmp_path)
    with DurableTestRunner() as runner:
        waiting = flows.confirm.delay(990002, timeout=3600).id
        flows.confirm.delay(990003, timeout=3600)
        runner.run_until_idle(advance_clock=False)
    send_event("user.confirmed", {"user_id": 12345})  # matches no wait: still listed
    send_event("order.paid", {"order_id": 17, "amount": "12.50"}, id="order-17-paid")
    page = log_in(browser, admin_server)
    page.goto(f"{admin_server.url}/admin/celery_durable/event/")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 2
    page.click("#durable-send-event")
    page.fill("#id_name", "user.confirmed")
    page.fill("#id_payload", '{"user_id": 990002}')
    page.screenshot(path=str(shots / "admin-send-event.png"))
    page.click("#durable-send-submit")
    page.wait_for_selector("#durable-event-resumed")
    assert waiting in page.locator("#durable-event-resumed").inner_text()
    assert "990003" in page.locator("#durable-event-waiting").inner_text()  # still waits: other match
    assert Run.objects.get(id=waiting).status == RunStatus.QUEUED
    assert Event.objects.filter(name="user.confirmed").count() == 2
    page.screenshot(path=str(shots / "admin-event.png"), full_page=True)
    page.goto(f"{admin_server.url}/admin/celery_durable/event/")
    page.screenshot(path=str(shots / "admin-events.png"))
    page.close()


def test_changelist_fits_1400_pixels_with_the_sidebar_open(admin_server, browser, tmp_path):
    shots = screenshots(tmp_path)
    now = timezone.now()
    for i in range(5):
        Run.objects.create(
            id=str(uuid.uuid4()),
            task_name="billing.reconcile_invoices_for_enterprise_customers_nightly",
            status=RunStatus.PENDING if i % 2 else RunStatus.COMPLETED,
            args='[{"customer": "Enterprise Customer With A Long Name Ltd", "period": "2024-01"}]',
            kwargs='{"dry_run": false}',
            slot_key1="billing.reconcile_invoices_for_enterprise_customers_nightly:customer:acme-enterprise-eu-west",
            created_at=now - timedelta(minutes=i),
            started_at=now - timedelta(minutes=i),
            finished_at=None if i % 2 else now,
        )
    page = log_in(browser, admin_server)
    assert page.locator("#nav-sidebar").is_visible()  # a first visit: the sidebar is open
    overflow = page.evaluate(
        "() => { const r = document.querySelector('#changelist .results');"
        " return [r.scrollWidth, r.clientWidth, document.documentElement.scrollWidth]; }"
    )
    page.screenshot(path=str(shots / "admin-changelist-1400.png"))
    assert overflow[0] <= overflow[1], overflow  # no column cut off or scrolled away
    assert overflow[2] <= 1400, overflow
    page.close()
