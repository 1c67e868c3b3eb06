"""A minimal Django + Celery project written to a directory, for tests that run it in subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = """\
SECRET_KEY = "miniproject"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "celery_durable", "shop"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": {db!r},
        "OPTIONS": {{"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}},
    }}
}}
CELERY_BROKER_URL = {broker!r}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
"""

CELERY = """\
import os

from celery import Celery

import celery_durable

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
{install}app.autodiscover_tasks()
"""

TASKS = """\
from celery_durable import durable_task, step


def double(x):
    return 2 * x


@durable_task(name="shop.tasks.doubled")
def doubled(x):
    return step.run("double", double, x)
"""


def write_project(root: Path, *, install: bool, import_app: bool = True, broker: str = "memory://") -> Path:
    """``root/proj`` (settings, celery) and ``root/shop`` (one durable task); returns ``root``."""
    (root / "proj").mkdir(parents=True)
    (root / "shop").mkdir()
    (root / "proj" / "settings.py").write_text(SETTINGS.format(db=str(root / "db.sqlite3"), broker=broker))
    (root / "proj" / "celery.py").write_text(CELERY.format(install="celery_durable.install(app)\n" if install else ""))
    (root / "proj" / "__init__.py").write_text("from .celery import app as celery_app\n" if import_app else "")
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "tasks.py").write_text(TASKS)
    return root


def project_env(root: Path) -> dict[str, str]:
    """The environment that runs the project: its settings, the project and this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_TEST", "DJANGO_SETTINGS"))}
    env["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(ROOT)])
    return env


PYTHON = sys.executable
