"""A Django task (``django.tasks``, Django >= 6.0) run as a durable run.

Declared with Django's own ``@task``; ``TASKS`` in settings.py names
``celery_durable.tasks.DurableBackend``, so ``send_receipt.enqueue(order.id)`` records a
durable run that the Celery worker executes. ``step`` works as in a ``@durable_task``: if
the worker dies after the PDF is rendered, the rerun starts at the mail. One receipt per
order at a time (``@durable_options``).

Try it (``./manage.py shell``)::

    from shop.django_tasks import send_receipt
    result = send_receipt.enqueue(order_id=1)
    result.refresh(); result.status, result.return_value
"""

from django.conf import settings
from django.core.mail import send_mail
from django.tasks import task

from celery_durable import Concurrency, step
from celery_durable.tasks import durable_options

from .models import Order


def render_receipt(order_id: int) -> str:
    order = Order.objects.select_related("product").get(id=order_id)
    total = order.product.price * order.quantity
    return f"Receipt for order #{order.id}: {order.quantity} x {order.product.name} = {total} EUR"


@task
@durable_options(concurrency=Concurrency(key="order_id", limit=1), retries=5)
def send_receipt(order_id: int) -> str:
    """Render the receipt, then mail it: each a checkpointed step."""
    text = step.run("render", render_receipt, order_id)
    email = Order.objects.values_list("email", flat=True).get(id=order_id)
    step.run("mail", send_mail, f"Your receipt #{order_id}", text, settings.DEFAULT_FROM_EMAIL, [email])
    return text
