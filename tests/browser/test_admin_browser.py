"""The admin in a real headless Chromium: dashboard, a failed run, replay, completion.

Screenshots go to ``$DURABLE_SCREENSHOT_DIR`` (the docs' are made with
``DURABLE_SCREENSHOT_DIR=docs/img``), else to the test's temporary directory.
"""

import os
import uuid
from datetime import timedelta
from pathlib import Path

from django.contrib.auth.models import User
from django.utils import timezone

from celery_durable import NonRetriableError
from celery_durable.models import Run
from celery_durable.states import RunStatus
from celery_durable.testing import DurableTestRunner
from tests.testapp import tasks


def screenshots(tmp_path) -> Path:
    directory = Path(os.environ.get("DURABLE_SCREENSHOT_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def past_day():
    """Finished runs spread over the last 24 hours, so the dashboard's chart has a shape."""
    now = timezone.now()
    rows = []
    for hour in range(24):
        volume = 20 + (hour * 7) % 30
        for i in range(volume):
            failed = i < (3 if hour in (5, 6, 7) else hour % 2)
            created = now - timedelta(hours=hour, minutes=i % 60)
            rows.append(
                Run(
                    id=str(uuid.uuid4()),
                    task_name=("shop.checkout", "mail.digest", "billing.dunning")[i % 3],
                    status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
                    created_at=created,
                    started_at=created,
                    finished_at=created + timedelta(seconds=2 + i % 40),
                    error='{"type": "KeyError", "module": "builtins", "message": "sku", "traceback": ""}'
                    if failed
                    else None,
                )
            )
    Run.objects.bulk_create(rows)


def some_history(runner):
    """A little traffic so the pages have something to show."""
    past_day()
    for i in range(6):
        tasks.add.delay(i, i)
    for i in range(3):
        tasks.three_steps.delay(i)
    runner.run_until_idle()


def some_backlog():
    for i in range(4):
        tasks.add.delay(100 + i, 1)  # queued, never executed here: the backlog
    Run.objects.create(
        id=str(uuid.uuid4()),
        task_name="billing.dunning",
        status=RunStatus.SLEEPING,
        created_at=timezone.now() - timedelta(days=2),
        started_at=timezone.now() - timedelta(days=2),
        wake_at=timezone.now() + timedelta(minutes=25),
    )


def test_replay_a_failed_run_from_the_admin(admin_server, browser, tmp_path):
    shots = screenshots(tmp_path)
    User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")
    with DurableTestRunner() as runner:
        some_history(runner)
        runner.fail_step("t.three_steps", "two", NonRetriableError("card declined <script>alert(1)</script>"))
        failed = tasks.three_steps.delay(20).id
        runner.run_until_idle()
        assert Run.objects.get(id=failed).status == RunStatus.FAILED
        some_backlog()

        page = browser.new_page(viewport={"width": 1400, "height": 900})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

        # Log in, land on the dashboard.
        page.goto(f"{admin_server.url}/admin/login/?next=/admin/celery_durable/run/dashboard/")
        page.fill("#id_username", "ops")
        page.fill("#id_password", "correct horse battery")
        page.click("input[type=submit]")
        page.wait_for_selector("#durable-chart")
        page.click("#toggle-nav-sidebar")  # more room for the tables (remembered by the browser)
        assert page.locator("#durable-backlog-total").inner_text() == "4"
        assert "t.three_steps" in page.locator("#durable-per-task").inner_text()
        assert page.locator("rect.durable-bar-failed").count() == 24
        page.screenshot(path=str(shots / "admin-dashboard.png"), full_page=True)

        # The changelist, filtered to failed runs.
        page.goto(f"{admin_server.url}/admin/celery_durable/run/")
        page.wait_for_selector("#result_list")
        page.screenshot(path=str(shots / "admin-changelist.png"))
        page.goto(f"{admin_server.url}/admin/celery_durable/run/?status=failed&task=t.three_steps")
        page.wait_for_selector("#result_list")
        page.click(f"#result_list a.durable-run-id[title='{failed}']")

        # The run page: the failing step and its error, escaped.
        page.wait_for_selector("#durable-run-error")
        error = page.locator("#durable-run-error").inner_text()
        assert "NonRetriableError" in error and "card declined <script>alert(1)</script>" in error
        assert "durable-status--failed" in page.locator("tr[data-step-id='two']").inner_html()
        assert page.locator("#durable-run-status").inner_text() == "failed"
        page.screenshot(path=str(shots / "admin-run-failed.png"), full_page=True)

        # Replay from the failed step (a POST with the CSRF token).
        page.click("#durable-replay-failed")
        page.wait_for_selector("text=replayed from the failed step")
        assert page.locator("#durable-run-status").inner_text() == "queued"

        # A worker picks it up: here the in-process driver, on the same database.
        while Run.objects.get(id=failed).status != RunStatus.COMPLETED:
            assert runner.run_next() is not None
        assert runner.result(failed) == 2 * 21 + 3

        page.reload()
        assert page.locator("#durable-run-status").inner_text() == "completed"
        assert "45" in page.locator("#durable-result").inner_text()
        page.screenshot(path=str(shots / "admin-run.png"), full_page=True)
        assert dialogs == []  # no script ran: the error text was escaped
        page.close()
