"""Scheduled tasks of the e2e schedule tests: declared only in workers started with
``-I tests.testapp.scheduled_tasks`` and ``DURABLE_TEST_SCHEDULES=<names>`` (never in the test
process, whose other tests expect no schedule)."""

import os
import time
from datetime import UTC, datetime, timedelta

from celery_durable import Schedule, durable_task, step

from .models import BodyRun, Interval

ENABLED = set(filter(None, os.environ.get("DURABLE_TEST_SCHEDULES", "").split(",")))
PREFIX = "tests.testapp.scheduled_tasks"


def _ticking() -> None:
    """One step: each execution of its body is a BodyRun row."""
    step.run("tick", lambda: BodyRun.objects.create(run_id=step.run_id, step="tick", pid=os.getpid()) and None)


def _slow(key: str) -> None:
    """Five steps of 0.4 s, each body's interval recorded (a cancel stops it at a step boundary)."""
    for index in range(5):

        def body(index=index):
            row = Interval.objects.create(run_id=step.run_id, key=key, started=datetime.now(UTC), pid=os.getpid())
            time.sleep(0.4)
            Interval.objects.filter(pk=row.pk).update(ended=datetime.now(UTC))

        step.run(f"part-{index}", body)


if "every_second" in ENABLED:

    @durable_task(
        name=f"{PREFIX}.every_second",
        schedule=Schedule(every=timedelta(seconds=1), overlap="allow", catchup=timedelta(minutes=5)),
    )
    def every_second():
        _ticking()


for _policy in ("skip", "buffer_one", "cancel_other", "allow"):
    if f"slow_{_policy}" in ENABLED:

        def _make(policy):
            @durable_task(
                name=f"{PREFIX}.slow_{policy}",
                schedule=Schedule(every=timedelta(seconds=1), overlap=policy, catchup=timedelta(minutes=5)),
            )
            def slow():
                _slow(policy)

            return slow

        globals()[f"slow_{_policy}"] = _make(_policy)
