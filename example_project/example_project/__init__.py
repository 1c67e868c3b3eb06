# Load the Celery app whenever Django starts, so that @durable_task/@shared_task bind to it.
from .celery import app as celery_app

__all__ = ["celery_app"]
