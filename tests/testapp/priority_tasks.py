"""A task whose only flow-control option is ``priority=``: ordered by the broker, not a backlog."""

from celery_durable import durable_task


@durable_task(name="f.prioritized", priority=lambda batch, n, priority=0: priority)
def prioritized(batch, n, priority=0):
    """Records when it started, for the broker-order check."""
    from django.utils import timezone

    from tests.testapp.models import Interval

    Interval.objects.create(run_id=prioritized.request.id, key=batch, started=timezone.now(), ended=timezone.now())
    return n


@durable_task(name="f.resumable")
def resumable(batch):
    """Waits for ``e2e.resume``, then records when it went on (the resume lane check)."""
    from django.utils import timezone

    from celery_durable import step
    from tests.testapp.models import Interval

    step.wait_for_event("go", "e2e.resume", timeout=3600)
    Interval.objects.create(run_id=resumable.request.id, key=batch, started=timezone.now(), ended=timezone.now())
    return batch
