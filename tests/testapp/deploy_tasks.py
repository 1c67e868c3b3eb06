"""Tasks of issue 16 (deploy check, step.patched, per-step policy, wait for any).

``DURABLE_TEST_DEPLOY`` picks the version of ``dp.order`` a process runs, so an e2e test
can start runs on one version and check (or resume) them on another:

- ``v1``: the original code;
- ``v2``: the audit step renamed, a breaking change for runs that went through it;
- ``v3``: the same change behind ``step.patched("audit-v2")``.
"""

import os
import time

from celery_durable import RetryPolicy, durable_task, step

from .models import BodyRun
from .tasks import counted

DEPLOY = os.environ.get("DURABLE_TEST_DEPLOY", "v1")


def audit(n):
    if DEPLOY == "v1":
        name = "audit"
    elif DEPLOY == "v2":
        name = "audit-v2"  # renamed outright
    else:
        name = "audit-v2" if step.patched("audit-v2") else "audit"
    step.run(name, counted, name, n)


@durable_task(name="dp.order")
def order(n, nap=3600):
    step.run("reserve", counted, "reserve", n)
    if n % 50 == 0:  # one run in fifty goes through the audit
        audit(n)
    step.sleep("cool-off", nap)
    return step.run("ship", counted, "ship", n)


def held(name, seconds):
    """Count the attempt; the first attempt of ``name`` sleeps ``seconds``, later ones return at once."""
    attempts = BodyRun.objects.filter(run_id=step.run_id, step=name).count()
    counted(name)
    if attempts == 0:
        time.sleep(seconds)
    return attempts + 1


@durable_task(name="dp.slow_then_fast", retries=0)
def slow_then_fast(timeout=1.0, seconds=60.0):
    policy = RetryPolicy(retries=2, retry_backoff=False, default_retry_delay=0)
    return step.run("slow", held, "slow", seconds, retry=policy, timeout=timeout)


@durable_task(name="dp.payment")
def payment(order_id, hold=False):
    def prepare():
        counted("prepare")
        deadline = time.monotonic() + 120
        while hold and time.monotonic() < deadline and not BodyRun.objects.filter(step=f"go-{order_id}").exists():
            time.sleep(0.05)
        return order_id

    step.run("prepare", prepare)
    event = step.wait_for_event(
        "outcome", ["payment.succeeded", "payment.failed"], match={"order_id": order_id}, timeout=3600
    )
    return None if event is None else [event.name, event.data]
