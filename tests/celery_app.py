"""The Celery app of the test suite (workers in e2e tests run ``celery -A tests.celery_app``)."""

import os

from celery import Celery

import celery_durable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
celery_durable.install(app)
app.autodiscover_tasks()
