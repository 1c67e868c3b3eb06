"""Settings of the celery-durable example project.

Zero-setup by default: SQLite for the database, kombu's ``filesystem://`` transport for
the broker and django-celery-results for results, all stored under ``var/`` (created on
first use, ignored by git). Nothing to install or start besides this project.

Point it at real services with environment variables:

    EXAMPLE_DATABASE_URL=postgres://user:password@localhost:5432/shop
    EXAMPLE_BROKER_URL=redis://localhost:6379/0
    EXAMPLE_VAR_DIR=/tmp/shop-var       # where SQLite, the broker folders, mails live
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("EXAMPLE_VAR_DIR") or BASE_DIR / "var").resolve()

# A development-only key; a real deployment sets DJANGO_SECRET_KEY.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-celery-durable-example-project")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "celery_durable",
    "shop",
    # The migration guide's before/after example (docs/howto/migrate.md); no models.
    "migration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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


def database_from_url(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry from ``postgres://user:pw@host:port/name`` or ``sqlite:///path``."""
    parts = urlsplit(url)
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # Keep the connection between tasks (celery-durable closes only broken ones).
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
            # Prepared statements: PostgreSQL plans a run's statements once per connection
            # (check celery_durable.W012, docs/howto/deploy.md).
            "OPTIONS": {"server_side_binding": True, "prepare_threshold": 5},
        }
    if parts.scheme == "sqlite":
        return sqlite_database(Path(unquote(parts.path)))
    raise ValueError(f"EXAMPLE_DATABASE_URL: unsupported scheme {parts.scheme!r} (use postgres:// or sqlite://)")


def sqlite_database(path: Path) -> dict[str, Any]:
    """SQLite as celery-durable needs it with several processes (check celery_durable.E002)."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # Writers take the lock when the transaction begins: no "database is locked"
            # upgrade deadlocks between the worker, its services thread and the web process.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            # Readers do not block the writer.
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }


DATABASE_URL = os.environ.get("EXAMPLE_DATABASE_URL", "")
DATABASES = {"default": database_from_url(DATABASE_URL) if DATABASE_URL else sqlite_database(VAR_DIR / "db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# Receipts are "sent" as files: look at them in var/mail/.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = VAR_DIR / "mail"
DEFAULT_FROM_EMAIL = "shop@example.com"

# --- Celery -------------------------------------------------------------------------

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("EXAMPLE_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's transport with atomic message files (see fs_transport.py).
    CELERY_BROKER_TRANSPORT = "example_project.fs_transport:Transport"
    # One folder is both "in" and "out": producer and workers share it on this machine.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": True,
        "processed_folder": str(BROKER_DIR / "processed"),
        "polling_interval": 0.1,
    }
    for folder in ("queue", "control", "processed"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)

CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Durable tasks are acks_late; fetch one message at a time per process.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Small values so that the demo's crashed run resumes within seconds. A run whose worker
# died resumes after about LEASE_SECONDS + WAKER_INTERVAL. Production defaults: 30 / 10 / 1.0.
CELERY_DURABLE = {
    "LEASE_SECONDS": 5,
    "HEARTBEAT_SECONDS": 2,
    "WAKER_INTERVAL": 0.5,
    # The filesystem transport cannot redeliver a message whose worker was killed: let the
    # sweeper republish queued runs whose message got lost sooner than the default 120 s.
    "REPUBLISH_AFTER_SECONDS": 15,
}

# Django's own task API (Django >= 6.0): @task functions become durable runs on this
# project's Celery app (shop/django_tasks.py). The worker imports the module listed here.
if django.VERSION >= (6, 0):
    TASKS = {"default": {"BACKEND": "celery_durable.tasks.DurableBackend"}}
    CELERY_IMPORTS = ["shop.django_tasks"]

# --- The shop app -------------------------------------------------------------------

# Where the crash demo remembers that it already killed its worker once.
SHOP_CRASH_MARKER_DIR = VAR_DIR / "crash-markers"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "celery_durable": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "shop": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
