"""Settings for the test suite. ``DURABLE_TEST_DB`` picks the database: sqlite, postgres, mysql."""

import os
from pathlib import Path
from typing import Any

import django

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_celery_results",
    "celery_durable",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DB = os.environ.get("DURABLE_TEST_DB", "sqlite")
# One file per test process: concurrent pytest runs must not share (and corrupt) it.
SQLITE_PATH = os.environ.get("DURABLE_TEST_SQLITE", str(BASE_DIR / "var" / f"tests-{os.getpid()}.sqlite3"))
DATABASES: dict[str, dict[str, Any]]
if DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("DURABLE_TEST_PG_NAME", "test"),
            "USER": os.environ.get("DURABLE_TEST_PG_USER", "postgres"),
            "HOST": os.environ.get("DURABLE_TEST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DURABLE_TEST_PG_PORT", "5432"),
            "CONN_MAX_AGE": None,
            "TEST": {"NAME": os.environ.get("DURABLE_TEST_PG_TEST_NAME", f"celery_durable_test_{os.getpid()}")},
        }
    }
    if os.environ.get("DURABLE_TEST_PG_PREPARED") == "1":
        # Parameters bound on the server, a statement prepared from its sixth execution on a
        # connection: the setting docs/howto/deploy.md recommends.
        DATABASES["default"]["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 5}
elif DB == "mysql":
    import pymysql  # type: ignore[import-untyped]

    pymysql.install_as_MySQLdb()
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": os.environ.get("DURABLE_TEST_MYSQL_NAME", "test"),
            "USER": os.environ.get("DURABLE_TEST_MYSQL_USER", "root"),
            "PASSWORD": os.environ.get("DURABLE_TEST_MYSQL_PASSWORD", ""),
            "HOST": os.environ.get("DURABLE_TEST_MYSQL_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DURABLE_TEST_MYSQL_PORT", "3306"),
            "CONN_MAX_AGE": None,
            "OPTIONS": {"charset": "utf8mb4", "isolation_level": "read committed"},
            "TEST": {
                "NAME": os.environ.get("DURABLE_TEST_MYSQL_TEST_NAME", f"celery_durable_test_{os.getpid()}"),
                "CHARSET": "utf8mb4",
            },
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL;",
            },
            "TEST": {"NAME": SQLITE_PATH},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CELERY_BROKER_URL = os.environ.get("DURABLE_TEST_BROKER_URL", "memory://")
CELERY_RESULT_BACKEND = os.environ.get("DURABLE_TEST_RESULT_BACKEND", "django-db")
CELERY_TASK_DEFAULT_PRIORITY = None
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DURABLE_TEST_QUEUE", "celery")
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Queues declared with x-max-priority on RabbitMQ, so priority= also orders the broker queue.
CELERY_TASK_QUEUE_MAX_PRIORITY = 10
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

CELERY_DURABLE = {
    "LEASE_SECONDS": float(os.environ.get("DURABLE_TEST_LEASE_SECONDS", "30")),
    "HEARTBEAT_SECONDS": float(os.environ.get("DURABLE_TEST_HEARTBEAT_SECONDS", "10")),
    "WAKER_INTERVAL": float(os.environ.get("DURABLE_TEST_WAKER_INTERVAL", "1.0")),
    "REPUBLISH_AFTER_SECONDS": float(os.environ.get("DURABLE_TEST_REPUBLISH_AFTER", "120")),
    "OBSERVE_PLAIN_TASKS": [p for p in os.environ.get("DURABLE_TEST_OBSERVE", "").split(",") if p] or False,
    # With DURABLE_TEST_RESULT_BACKEND=celery_durable.results.DurableResultBackend (tests/e2e/test_results_backend.py).
    "PLAIN_RESULT_BACKEND": os.environ.get("DURABLE_TEST_PLAIN_RESULT_BACKEND") or None,
}

if django.VERSION >= (6, 0):  # django.tasks: Django's own task API on celery_durable.tasks.DurableBackend
    from celery_durable.options import Timeouts

    TASKS = {
        "default": {
            "BACKEND": "celery_durable.tasks.DurableBackend",
            "QUEUES": [],  # any queue name: Celery queues
            "OPTIONS": {
                "TASK_OPTIONS": {
                    "tests.testapp.django_tasks.configured": {
                        "idempotency_key": "order_id",
                        "timeouts": Timeouts(finish=3600),
                    },
                },
            },
        }
    }
    CELERY_IMPORTS = ["tests.testapp.django_tasks"]

if os.environ.get("DURABLE_TEST_SERVICES_CLOCK"):
    # The chaos suite's clock jumps: this worker's services thread (waker, reaper) reads its
    # clock offset from that file; every other thread keeps the real clock.
    from tests.chaos.clock import install_services_clock

    install_services_clock(os.environ["DURABLE_TEST_SERVICES_CLOCK"])
