"""The admin at scale: changelist, run page and dashboard with 1,000,000 runs and ~10,000,000 steps.

Usage (PostgreSQL on 127.0.0.1, a dedicated database that this script creates and fills)::

    .venv/bin/python bench/admin_scale.py                 # generate if needed, then measure
    .venv/bin/python bench/admin_scale.py --runs 100000   # a smaller table
    .venv/bin/python bench/admin_scale.py --regenerate    # drop the data and generate again

Rows are generated inside PostgreSQL with ``INSERT ... SELECT ... generate_series`` (about
ten minutes for the full size on two cores). Each page is requested through Django's test
client in this process (so "server time" is the full view: queries, Python and template
rendering, without network), warmed up twice and then measured ``--repeat`` times; the
median and the worst are reported with the number of SQL queries and their summed time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = os.environ.get("BENCH_ADMIN_PG_NAME", "durable_admin_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ["DURABLE_TEST_DB"] = "postgres"
os.environ["DURABLE_TEST_PG_NAME"] = DB_NAME

TASKS = 20
STEPS_PER_RUN = 10


def ensure_database() -> None:
    import psycopg

    admin = psycopg.connect(
        host=os.environ.get("DURABLE_TEST_PG_HOST", "127.0.0.1"),
        user=os.environ.get("DURABLE_TEST_PG_USER", "postgres"),
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{DB_NAME}"')


def column_values(model, explicit: dict[str, str]) -> tuple[list[str], list[str], list]:
    """Columns and SQL expressions for every concrete field: ours, else NULL or the default."""
    from django.db import connection

    columns, expressions, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.primary_key and field.column not in explicit:
            continue  # serial primary key
        columns.append(connection.ops.quote_name(field.column))
        if field.column in explicit:
            expressions.append(explicit[field.column])
        elif field.null:
            expressions.append("NULL")
        elif field.has_default():
            expressions.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
        else:
            raise SystemExit(f"bench/admin_scale.py does not know how to fill {model.__name__}.{field.name}")
    return columns, expressions, params


def generate(runs: int) -> None:
    from django.db import connection

    from celery_durable.models import Run, Step

    run_table = connection.ops.quote_name(Run._meta.db_table)
    step_table = connection.ops.quote_name(Step._meta.db_table)
    status = (
        "(CASE WHEN mod(i, 100) < 90 THEN 'completed' WHEN mod(i, 100) < 95 THEN 'failed' "
        "WHEN mod(i, 100) < 97 THEN 'queued' WHEN mod(i, 100) = 97 THEN 'pending' "
        "WHEN mod(i, 100) = 98 THEN 'sleeping' ELSE 'running' END)"
    )
    created = f"(now() - ({runs} - i) * interval '2.6 seconds')"
    finished = f"{status} IN ('completed', 'failed')"
    explicit = {
        "id": "md5('run' || i)::uuid::text",
        "task_name": f"'bench.task_' || lpad(mod(i, {TASKS})::text, 2, '0')",
        "status": status,
        "args": "'[' || i || ', \"bench\"]'",
        "kwargs": "'{}'",
        "options": "'{}'",
        "result": f"CASE WHEN {status} = 'completed' THEN '{{\"ok\": true, \"n\": ' || i || '}}' END",
        "error": (
            f'CASE WHEN {status} = \'failed\' THEN \'{{"type": "ValueError", "module": "builtins", '
            f'"message": "card declined \' || i || \'", "traceback": "Traceback (most recent call last):\\\\n  '
            f"...\\\\nValueError: card declined\"}}' END"
        ),
        "priority": "0",
        "generation": "1",
        "executions": "1",
        "recoveries": "0",
        "created_at": created,
        "published_at": created,
        "started_at": f"CASE WHEN {status} NOT IN ('queued', 'pending') THEN {created} + interval '0.5 seconds' END",
        "finished_at": f"CASE WHEN {finished} THEN {created} + interval '3 seconds' END",
        "wake_at": f"CASE WHEN {status} = 'sleeping' THEN now() + mod(i, 7200) * interval '1 second' END",
        "lease_owner": f"CASE WHEN {status} = 'running' THEN 'bench-host:1' END",
        "lease_expires_at": f"CASE WHEN {status} = 'running' THEN now() + interval '30 seconds' END",
        # Concurrency (used only if the model has these columns): half the tasks are keyed per
        # user, 5,000 users; pending runs wait in the keys' backlogs.
        "slot_key1": (
            f"CASE WHEN mod(i, {TASKS}) < {TASKS // 2} THEN "
            f"'bench.task_' || lpad(mod(i, {TASKS})::text, 2, '0') || ':user-' || mod(i, 5000) END"
        ),
        "backlog_at": created,
        "holds_slots": f"(mod(i, {TASKS}) < {TASKS // 2} AND {status} IN ('queued', 'running'))",
    }
    columns, expressions, params = column_values(Run, explicit)
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '512MB'")
        print(f"TRUNCATE {run_table}, {step_table} CASCADE", flush=True)
        cursor.execute(f"TRUNCATE {run_table}, {step_table} CASCADE")
        started = time.monotonic()
        cursor.execute(
            f"INSERT INTO {run_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(expressions)} FROM generate_series(1, {runs}) AS i",
            params,
        )
        print(f"  {runs} runs in {time.monotonic() - started:.0f}s", flush=True)
        step_explicit = {
            "run_id": "r.id",
            "step_id": "'s' || lpad(g::text, 2, '0')",
            "kind": "'run'",
            "status": f"CASE WHEN r.status = 'failed' AND g = {STEPS_PER_RUN} THEN 'failed' ELSE 'completed' END",
            "output": '\'{"value": \' || g || \', "note": "a step output of moderate size"}\'',
            "error": (f"CASE WHEN r.status = 'failed' AND g = {STEPS_PER_RUN} THEN r.error END"),
            "attempts": "1",
            "started_at": "r.created_at + g * interval '0.2 seconds'",
            "finished_at": "r.created_at + g * interval '0.2 seconds' + interval '0.15 seconds'",
        }
        columns, expressions, params = column_values(Step, step_explicit)
        started = time.monotonic()
        cursor.execute(
            f"INSERT INTO {step_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(expressions)} FROM {run_table} r CROSS JOIN generate_series(1, {STEPS_PER_RUN}) g "
            f"WHERE r.status NOT IN ('queued', 'pending')",
            params,
        )
        print(f"  steps in {time.monotonic() - started:.0f}s", flush=True)
        cursor.execute(f"VACUUM ANALYZE {run_table}")
        cursor.execute(f"VACUUM ANALYZE {step_table}")


def measure(repeat: int) -> list[tuple[str, float, float, int, float]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from celery_durable.models import Run

    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    failed_id = Run.objects.filter(status="failed").order_by("-created_at").values_list("id", flat=True).first()
    some_id = Run.objects.order_by("created_at").values_list("id", flat=True).first()
    changelist = reverse("admin:celery_durable_run_changelist")
    keyed = any(field.name == "slot_key1" for field in Run._meta.concrete_fields)
    some_key = "bench.task_03:user-4003"
    pages = [
        ("changelist", changelist, {}),
        ("changelist, page 200", changelist, {"p": "200"}),
        ("filter status=failed", changelist, {"status": "failed"}),
        ("filter task", changelist, {"task": "bench.task_07"}),
        ("filter task + status=failed", changelist, {"task": "bench.task_07", "status": "failed"}),
        ("filter created last 24 h", changelist, {"created_since": "24h"}),
        ("filter status=running (rare)", changelist, {"status": "running"}),
        ("search by run id", changelist, {"q": some_id}),
        *(
            [
                ("filter concurrency key", changelist, {"key": some_key}),
                ("search by concurrency key", changelist, {"q": "user-4003"}),
            ]
            if keyed
            else []
        ),
        ("run page (failed, 10 steps)", reverse("admin:celery_durable_run_change", args=[failed_id]), {}),
        ("dashboard", reverse("admin:celery_durable_run_dashboard"), {}),
    ]
    results = []
    for label, url, params in pages:
        for _ in range(2):
            response = client.get(url, params)
            assert response.status_code == 200, (label, response.status_code)
        times, queries, sql_times = [], [], []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url, params)
                times.append(time.perf_counter() - started)
            assert response.status_code == 200
            queries.append(len(captured.captured_queries))
            sql_times.append(sum(float(q["time"]) for q in captured.captured_queries))
        results.append((label, statistics.median(times), max(times), max(queries), statistics.median(sql_times)))
        print(
            f"{label:32} median {statistics.median(times) * 1000:7.1f} ms  max {max(times) * 1000:7.1f} ms  "
            f"queries {max(queries):2}  sql {statistics.median(sql_times) * 1000:6.1f} ms",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()

    ensure_database()
    import django
    from django.core.management import call_command

    django.setup()
    from celery_durable.models import Run, Step

    call_command("migrate", verbosity=0)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM celery_durable_run")
        have = cursor.fetchone()[0]
    if args.regenerate or have != args.runs:
        print(f"generating {args.runs} runs and ~{args.runs * STEPS_PER_RUN} steps in {DB_NAME}", flush=True)
        generate(args.runs)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)), "
            "(SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)), version()",
            [Run._meta.db_table, Step._meta.db_table],
        )
        runs, steps, version = cursor.fetchone()
    print(f"{runs} runs, {steps} steps (estimates); {version.split(',')[0]}", flush=True)
    results = measure(args.repeat)
    print()
    print("| page | median | worst | queries | SQL time (median) |")
    print("|---|---:|---:|---:|---:|")
    for label, median, worst, queries, sql in results:
        print(f"| {label} | {median * 1000:.0f} ms | {worst * 1000:.0f} ms | {queries} | {sql * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
