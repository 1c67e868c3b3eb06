"""Celery glue: the task base class, publication of nudges, worker services, ``install``."""
