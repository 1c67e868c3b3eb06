"""Batched tasks (``Batch``): used by the batching integration and e2e tests and the bench."""

from datetime import timedelta

from celery_durable import Batch, durable_task, step

from .models import BodyRun


@durable_task(name="b.collect", batch=Batch(max_size=3, wait=timedelta(seconds=60), key="account"))
def collect(items):
    """Record each item's ``n`` (one row per item per execution of the body) and return their sum."""
    BodyRun.objects.bulk_create([BodyRun(run_id=step.run_id, step=f"item:{item['n']}") for item in items])
    return step.run("sum", _total, [item["n"] for item in items])


def _total(numbers):
    return sum(numbers)


@durable_task(name="b.failing", batch=Batch(max_size=2, wait=60))
def failing(items):
    raise ValueError(f"{len(items)} items refused")


@durable_task(name="b.bound", bind=True, batch=Batch(max_size=2, wait=60))
def bound(self, items):
    return [self.name, [item["x"] for item in items]]


@durable_task(name="b.slow", batch=Batch(max_size=100, wait=timedelta(seconds=4)))
def slow(items):
    """e2e: a batch that forms by time; each item's ``n`` recorded once per execution."""
    BodyRun.objects.bulk_create([BodyRun(run_id=step.run_id, step=f"slow:{item['n']}") for item in items])
    return len(items)
