"""The Celery app of the example project: ``celery -A example_project worker``."""

import os

from celery import Celery

import celery_durable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
# Every CELERY_* Django setting configures Celery (CELERY_BROKER_URL -> broker_url, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")
# Worker services (waker, reaper), connection reuse and intake hooks; plain tasks untouched.
celery_durable.install(app)
app.autodiscover_tasks()
