"""Celery glue: the task base class, publication of messages, worker services, ``install``."""
