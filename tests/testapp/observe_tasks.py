"""Plain Celery tasks (not durable) for OBSERVE_PLAIN_TASKS: recorded as one-step runs."""

from celery import shared_task


@shared_task(name="obs.double")
def double(x):
    return x * 2


@shared_task(name="obs.broken")
def broken(message):
    raise ValueError(message)


@shared_task(name="obs.flaky", bind=True, max_retries=3)
def flaky(self, failures):
    """Fails ``failures`` times through ``self.retry()`` (countdown 0), then returns its retry count."""
    if self.request.retries < failures:
        raise self.retry(countdown=0)
    return self.request.retries


@shared_task(name="obs.opaque")
def opaque(value):
    return object()  # not JSON: the task succeeds, the result is not recorded
