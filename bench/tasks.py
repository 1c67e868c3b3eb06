"""Benchmark tasks: the plain baselines and their durable counterparts do the same work."""

from celery import shared_task

from celery_durable import durable_task, step

try:  # absent from snapshots older than batching (bench.peers --snapshot of the issue 14 base)
    from celery_durable import Batch
except ImportError:
    Batch = None


def inc(x):
    return x + 1


@shared_task(name="bench.noop")
def noop():
    """The wake-up message of a drain measurement."""


@shared_task(name="bench.one")
def one(x):
    """Plain Celery baseline of a 1-step run (also each link of the chain of 3)."""
    return inc(x)


@durable_task(name="bench.durable1")
def durable1(x):
    return step.run("one", inc, x)


@durable_task(name="bench.durable3")
def durable3(x):
    a = step.run("one", inc, x)
    b = step.run("two", inc, a)
    return step.run("three", inc, b)


# --- in-process statement counting (bench/statements.py) ---------------------------------

MARK_HOOK = None


def mark(label):
    """Tell the statement counter where the body is (a no-op in workers)."""
    if MARK_HOOK is not None:
        MARK_HOOK(label)


@durable_task(name="bench.probe3")
def probe3(x):
    mark("step one")
    a = step.run("one", inc, x)
    mark("step two")
    b = step.run("two", inc, a)
    mark("step three")
    c = step.run("three", inc, b)
    mark("finish")
    return c


@durable_task(name="bench.single")
def single(n):
    """bench/batching.py: one call, one run (no step)."""
    return n


if Batch is not None:

    @durable_task(name="bench.batch100", batch=Batch(max_size=100, wait=3600))
    def batch100(items):
        """bench/batching.py: 100 calls, one run (no step)."""
        return len(items)


@durable_task(name="bench.waits_for_go")
def waits_for_go(n):
    """bench/event_fanin.py: a run waiting for ``bench.go``."""
    return [n, step.wait_for_event("go", "bench.go", timeout=3600).data["round"]]
