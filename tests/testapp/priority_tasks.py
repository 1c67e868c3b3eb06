"""A task whose only flow-control option is ``priority=``: ordered by the broker, not a backlog."""

from celery_durable import durable_task


@durable_task(name="f.prioritized", priority=lambda batch, n, priority=0: priority)
def prioritized(batch, n, priority=0):
    """Records when it started, for the broker-order check."""
    from django.utils import timezone

    from tests.testapp.models import Interval

    Interval.objects.create(run_id=prioritized.request.id, key=batch, started=timezone.now(), ended=timezone.now())
    return n
