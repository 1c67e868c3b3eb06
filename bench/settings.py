"""Django settings of the benchmark: a dedicated PostgreSQL database and dedicated Redis dbs.

The benchmark driver and the worker read the same environment, so a baseline and the
candidate of one comparison always run with the same settings:

* ``BENCH_RESULTS``: ``django-db`` (django-celery-results), ``redis``, ``rows`` (``DurableResultBackend``,
  plain tasks in django-celery-results), ``rows-redis`` (the same, plain tasks in Redis) or ``none``.
* ``BENCH_DB_REUSE``: ``1`` sets ``CELERY_DB_REUSE_MAX`` (Celery's Django fixup then keeps
  connections); anything else keeps Celery's default (close connections around every task).
"""

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_celery_results",
    "celery_durable",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

PG_NAME = os.environ.get("BENCH_PG_NAME", "durable_bench")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG_NAME,
        "USER": os.environ.get("BENCH_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
        "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
        "CONN_MAX_AGE": None,
        # BENCH_PG_SERVER_BINDING=1: psycopg binds parameters on the server and prepares a
        # statement after its fifth execution on a connection (the plan is cached).
        "OPTIONS": (
            {"server_side_binding": True, "prepare_threshold": 5}
            if os.environ.get("BENCH_PG_SERVER_BINDING") == "1"
            else {}
        ),
    }
}

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
BROKER_DB = int(os.environ.get("BENCH_BROKER_DB", "13"))
RESULTS_DB = int(os.environ.get("BENCH_RESULTS_DB", "14"))

# BENCH_BROKER_URL (bench.peers --broker rabbitmq): another broker; Redis (db BROKER_DB) by default.
CELERY_BROKER_URL = os.environ.get("BENCH_BROKER_URL") or f"{REDIS_URL}/{BROKER_DB}"
if CELERY_BROKER_URL.startswith("amqp"):
    # Queues declared with x-max-priority: a resumed run's priority orders RabbitMQ's queue too.
    CELERY_TASK_QUEUE_MAX_PRIORITY = 10
RESULTS = os.environ.get("BENCH_RESULTS", "django-db")
if RESULTS == "django-db":
    CELERY_RESULT_BACKEND = "django-db"
elif RESULTS == "redis":
    CELERY_RESULT_BACKEND = f"{REDIS_URL}/{RESULTS_DB}"
elif RESULTS == "none":
    CELERY_RESULT_BACKEND = None
elif RESULTS in ("rows", "rows-redis"):  # durable runs' results read from their rows
    CELERY_RESULT_BACKEND = "celery_durable.results.DurableResultBackend"
else:
    raise ValueError(f"BENCH_RESULTS={RESULTS!r}: expected django-db, redis, rows, rows-redis or none")

if os.environ.get("BENCH_DB_REUSE") == "1":
    CELERY_DB_REUSE_MAX = 1_000_000

CELERY_TASK_DEFAULT_QUEUE = "bench"
CELERY_TASK_DEFAULT_PRIORITY = None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# BENCH_PREFETCH=1: the worker setting the quickstart and docs/howto/deploy.md recommend for
# durable workers; by default the prefetch multiplier is Celery's 4.
if os.environ.get("BENCH_PREFETCH"):
    CELERY_WORKER_PREFETCH_MULTIPLIER = int(os.environ["BENCH_PREFETCH"])
# Everything else (acks_late per task, serializer json) is Celery's default.

CELERY_DURABLE: dict[str, object] = {}
if RESULTS == "rows":  # plain tasks' results in django-celery-results
    CELERY_DURABLE["PLAIN_RESULT_BACKEND"] = "django-db"
elif RESULTS == "rows-redis":  # plain tasks' results in Redis
    CELERY_DURABLE["PLAIN_RESULT_BACKEND"] = f"{REDIS_URL}/{RESULTS_DB}"
if os.environ.get("BENCH_OBSERVE") == "1":  # bench/observe.py: plain tasks recorded as runs
    CELERY_DURABLE["OBSERVE_PLAIN_TASKS"] = ["bench.one"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
