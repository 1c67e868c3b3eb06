"""A ``django.tasks`` backend (Django >= 6.0): Django's ``@task`` functions as durable runs on Celery.

::

    TASKS = {"default": {"BACKEND": "celery_durable.tasks.DurableBackend", "QUEUES": []}}

Each Django task becomes one durable Celery task named by its module path; ``step``,
flow control (``@durable_options`` or ``OPTIONS["TASK_OPTIONS"]``), the admin and the
metrics work for it as for any ``@durable_task``.
"""

from __future__ import annotations

import django

MINIMUM_DJANGO = (6, 0)

if django.VERSION < MINIMUM_DJANGO:
    # ModuleNotFoundError (an ImportError) naming this module: Celery's autodiscovery of
    # ``<app>.tasks`` modules then skips it, as it skips an app without a tasks module.
    raise ModuleNotFoundError(
        f"celery_durable.tasks needs Django >= 6.0 (django.tasks); this is Django {django.get_version()}. "
        f"Use @durable_task on Django < 6.0.",
        name=__name__,
    )

from .backend import DurableBackend  # noqa: E402  (after the version gate)
from .declare import durable_options  # noqa: E402

__all__ = ["DurableBackend", "durable_options"]
