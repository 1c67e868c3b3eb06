"""The benchmark's Celery app: ``celery -A bench.celery_app worker``."""

import os

from celery import Celery

import celery_durable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench", include=["bench.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
celery_durable.install(app)
