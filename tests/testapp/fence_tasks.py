"""Durable tasks of the fence, race and uncovered-path tests (tests/integration/test_uncovered_paths.py)."""

from collections.abc import Callable
from datetime import timedelta

from celery_durable import Concurrency, Debounce, Timeouts, durable_task, step

from .tasks import counted

# Called inside step "one" of x.finish_deadline (the test sets it): what happens meanwhile.
DURING_STEP: list[Callable[[], None]] = []


@durable_task(name="x.start_deadline", timeouts=Timeouts(start=60), concurrency=Concurrency(limit=1, key="key"))
def start_deadline(key, nap):
    """Must start within 60 s of its call; one per key at a time (a backlog makes it late)."""
    step.run("one", counted, "one", key)
    step.sleep("nap", nap)
    return step.run("two", counted, "two", key)


@durable_task(name="x.finish_deadline", timeouts=Timeouts(finish=timedelta(seconds=60)))
def finish_deadline():
    def one():
        counted("one")
        for action in DURING_STEP:
            action()
        return 1

    step.run("one", one)
    return step.run("two", counted, "two", 2)


@durable_task(name="x.fan_out")
def fan_out(n):
    """Children with deterministic ids: the same on every attempt of the step."""
    return step.gather("fan", [child_until_fixed.s(i) for i in range(n)])


@durable_task(name="x.child_until_fixed", retries=0)
def child_until_fixed(i):
    """Child 0 fails while a "broken" BodyRun row exists (the test writes and deletes it)."""
    from .models import BodyRun

    def work():
        counted(f"work-{i}")
        if i == 0 and BodyRun.objects.filter(step="broken").exists():
            raise ValueError("child broke")
        return i * 2

    return step.run("work", work)


@durable_task(name="x.debounced_nap", debounce=Debounce(period=60, key="account", timeout=300))
def debounced_nap(account, version):
    """Debounced; once started it sleeps an hour (a later call must not rewrite it)."""
    step.sleep("nap", 3600)
    return version
