"""Celery app of the peer benchmark: ``celery -A bench.peers.app worker`` (bench/peers/celery_side.py starts it).

The same settings module as the rest of bench/ (bench/settings.py); bench/peers/run.py sets
its own PostgreSQL database and Redis db through the environment before anything starts.
"""

import os

from celery import Celery

import celery_durable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
if os.environ.get("BENCH_CHEAP_IGNORE") == "1":  # bench.peers --cheap-ignore: an experiment
    import bench.cheap_ignore  # noqa: F401

app = Celery("bench_peers", include=["bench.tasks", "bench.peers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
celery_durable.install(app)
