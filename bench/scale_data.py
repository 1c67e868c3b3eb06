"""The 1,000,000-run dataset of bench/scale.py, generated inside PostgreSQL.

Run ``i`` (1..N) gets its state from ``i mod 100`` (the mix of a production table with a
month of history), its times from ``T0`` (stored in ``bench_scale_meta``, so a pruned
range can be generated again identically):

====================  =====  ==================================================================
state                 share  details
====================  =====  ==================================================================
completed              80 %  3 completed steps
failed                  5 %  2 completed steps + 1 failed
cancelled               1 %  1 completed step
sleeping               10 %  1 completed step + the pending sleep step; wake 1 h to 30 days ahead
pending (hot key)       2 %  the backlog of one concurrency key (20,000 runs at 1,000,000)
pending (user keys)     1 %  backlogs of 1,000 user keys (10 runs each)
waiting / queued /      1 %  4 / 3 / 3 per mille; running runs hold every slot (2 per key)
running
====================  =====  ==================================================================

Created times are spread over 60 days (``created_at = T0 - (N - i) * 60 days / N``);
finished runs finished 3 s after creation. 30 % of the other runs carry a user key too (a
realistic ``durable_run_backlog1`` index). ``FlowState`` gets ``--flow-rows`` rows: 60 %
idempotency keys (held by a finished run, window not expired), 40 % throttle keys.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

LAYOUT = 2  # bump when the generated data changes shape
DAYS = 60
LIMIT = 2  # Concurrency(limit=...) of bench.scale.keyed: every key's slots
USERS = 1000

STATUS = (
    "(CASE WHEN m < 80 THEN 'completed' WHEN m < 85 THEN 'failed' WHEN m = 85 THEN 'cancelled' "
    "WHEN m < 96 THEN 'sleeping' WHEN m < 99 THEN 'pending' WHEN b < 4 THEN 'waiting' "
    "WHEN b < 7 THEN 'queued' ELSE 'running' END)"
)
FINISHED = "('completed', 'failed', 'cancelled')"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_sql(runs: int, t0: datetime, hot: str, user_prefix: str, upto: int | None) -> tuple[str, list[Any]]:
    from bench.admin_scale import column_values
    from celery_durable.models import Run

    created = f"(%s::timestamptz - ({runs} - i) * interval '{DAYS * 86400 / runs} seconds')"
    user_key = f"{user_prefix} || mod(i / 100, {USERS})"
    explicit = {
        "id": "md5('scale' || i)::uuid::text",
        "task_name": "CASE WHEN m IN (96, 97, 98) THEN 'bench.scale.keyed' ELSE 'bench.scale.t' || mod(i, 20) END",
        "status": STATUS,
        "args": "CASE WHEN m IN (96, 97, 98) THEN '[\"u\", ' || i || ']' ELSE '[' || i || ']' END",
        "result": f"CASE WHEN {STATUS} = 'completed' THEN '{{\"n\": ' || i || '}}' END",
        "error": f"CASE WHEN {STATUS} IN ('failed', 'cancelled') THEN "
        '\'{"type": "ValueError", "module": "builtins", "message": "declined", "traceback": ""}\' END',
        "generation": "1",
        "executions": "1",
        "created_at": created,
        "published_at": created,
        "started_at": f"CASE WHEN {STATUS} <> 'pending' THEN {created} + interval '0.5 seconds' END",
        "finished_at": f"CASE WHEN {STATUS} IN {FINISHED} THEN {created} + interval '3 seconds' END",
        # Deterministic spread over 30 days, from one hour after T0.
        "wake_at": f"CASE WHEN {STATUS} = 'sleeping' THEN %s::timestamptz + interval '1 hour' "
        "+ mod(i::bigint * 7919, 2592000) * interval '1 second' END",
        "waiting_for": f"CASE WHEN {STATUS} = 'waiting' THEN 'bench.scale.event' || mod(i, 500) END",
        "lease_owner": f"CASE WHEN {STATUS} = 'running' THEN 'bench-host-' || mod(i, 8) END",
        "lease_expires_at": f"CASE WHEN {STATUS} = 'running' THEN %s::timestamptz + interval '1 day' END",
        "slot_key1": f"CASE WHEN m IN (96, 97) THEN %s WHEN m = 98 OR (m < 96 AND mod(i, 10) < 3) THEN {user_key} END",
        "backlog_at": created,
    }
    columns, expressions, params = column_values(Run, explicit)
    # Parameters in the order their %s appear in the expressions.
    ordered: list[Any] = []
    for column, expression in zip(columns, expressions, strict=True):
        name = column.strip('"')
        if name in explicit:
            for _ in range(expression.count("%s")):
                ordered.append(hot if name == "slot_key1" else t0)
        else:
            ordered.extend([params.pop(0)] if expression == "%s" else [])
    where = f"WHERE i <= {upto}" if upto else ""
    sql = (
        f"INSERT INTO celery_durable_run ({', '.join(columns)}) SELECT {', '.join(expressions)} "
        f"FROM (SELECT i, mod(i, 100) AS m, mod(i / 100, 10) AS b FROM generate_series(1, {runs}) AS i) AS g "
        f"{where} ON CONFLICT DO NOTHING"
    )
    return sql, ordered


def _step_sql(where: str) -> str:
    from bench.admin_scale import column_values
    from celery_durable.models import Step

    wake = "to_char(r.wake_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
    explicit = {
        "run_id": "r.id",
        "step_id": "CASE WHEN g = 4 THEN 's' ELSE (ARRAY['one', 'two', 'three'])[g] END",
        "kind": "CASE WHEN g = 4 THEN 'sleep' ELSE 'run' END",
        "status": "CASE WHEN g = 4 THEN 'pending' WHEN r.status = 'failed' AND g = 3 THEN 'failed' "
        "ELSE 'completed' END",
        "output": 'CASE WHEN g = 4 THEN \'{"wake_at": {"__type__": "datetime", "__value__": "\' || '
        f"{wake} || '+00:00\"}}}}' WHEN r.status = 'failed' AND g = 3 THEN NULL ELSE '{{\"value\": ' || g || '}}' END",
        "error": "CASE WHEN r.status = 'failed' AND g = 3 THEN r.error END",
        "attempts": "1",
        "started_at": "r.created_at + g * interval '0.5 seconds'",
        "finished_at": "r.created_at + g * interval '0.5 seconds' + interval '0.2 seconds'",
    }
    columns, expressions, params = column_values(Step, explicit)
    assert not params, params
    # Steps per state: finished 3 (cancelled 1), sleeping 1 + the sleep step (g = 4), running/waiting 1.
    wanted = (
        "((r.status IN ('completed', 'failed') AND g <= 3) OR (r.status = 'cancelled' AND g = 1) "
        "OR (r.status = 'sleeping' AND g IN (1, 4)) OR (r.status IN ('running', 'waiting', 'queued') AND g = 1))"
    )
    return (
        f"INSERT INTO celery_durable_step ({', '.join(columns)}) SELECT {', '.join(expressions)} "
        f"FROM celery_durable_run r CROSS JOIN generate_series(1, 4) AS g WHERE {wanted} AND ({where}) "
        "ON CONFLICT DO NOTHING"
    )


def keys() -> tuple[str, str]:
    """The hot key's slot key and the prefix of the user keys, as ``Concurrency`` names them."""
    from bench.scale_app import keyed

    hot = next(iter(keyed.durable_spec.slot_limits((), {"user": "hot", "i": 0})))
    user = next(iter(keyed.durable_spec.slot_limits((), {"user": "user-", "i": 0})))
    return hot, f"'{user}'"


def meta() -> dict | None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_scale_meta (value text)")
        cursor.execute("SELECT value FROM bench_scale_meta")
        row = cursor.fetchone()
    return json.loads(row[0]) if row else None


def generate(runs: int, flow_rows: int) -> dict:
    """Empty the tables and fill them; returns the metadata stored with the data."""
    from django.db import connection

    t0 = datetime.now(UTC).replace(microsecond=0)
    hot, user_prefix = keys()
    timings = {}
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '256MB'")
        cursor.execute(
            "TRUNCATE celery_durable_step, celery_durable_run, celery_durable_flowstate, celery_durable_slot, "
            "celery_durable_event, bench_scale_meta CASCADE"
        )
        started = time.monotonic()
        cursor.execute(*_run_sql(runs, t0, hot, user_prefix, None))
        timings["runs_s"] = round(time.monotonic() - started)
        log(f"{runs} runs in {timings['runs_s']} s")
        started = time.monotonic()
        cursor.execute(_step_sql("true"))
        timings["steps_s"] = round(time.monotonic() - started)
        log(f"steps in {timings['steps_s']} s")
        # Every slot taken: LIMIT running runs hold each key (the hot one and the users').
        cursor.execute(
            "WITH holders AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM celery_durable_run "
            f"WHERE status = 'running' ORDER BY id LIMIT {LIMIT * (USERS + 1)}) "
            "UPDATE celery_durable_run r SET holds_slots = true, task_name = 'bench.scale.keyed', args = '[\"u\", 1]', "
            f"slot_key1 = CASE WHEN h.n < {LIMIT} THEN %s ELSE {user_prefix} || (h.n / {LIMIT} - 1) END "
            "FROM holders h WHERE r.id = h.id",
            [hot],
        )
        cursor.execute(
            'INSERT INTO celery_durable_slot (key, "limit", in_use) SELECT k, %s, %s FROM '
            f"(SELECT %s AS k UNION ALL SELECT {user_prefix} || u FROM generate_series(0, {USERS - 1}) u) s",
            [LIMIT, LIMIT, hot],
        )
        started = time.monotonic()
        idem = int(flow_rows * 0.6)
        cursor.execute(
            "INSERT INTO celery_durable_flowstate (name, run_id, expires_at, admitted) "
            "SELECT 'idempotency_key:bench.scale.idem:k' || n, md5('scale' || (mod(n * 100, %s) + 1))::uuid::text, "
            "%s::timestamptz + interval '365 days', '[]' FROM generate_series(1, %s) n",
            [runs, t0, idem],
        )
        cursor.execute(
            "INSERT INTO celery_durable_flowstate (name, tat, admitted) "
            "SELECT 'throttle:bench.scale.throttled:k' || n, %s::timestamptz - interval '1 day', '[]' "
            "FROM generate_series(1, %s) n",
            [t0, flow_rows - idem],
        )
        timings["flow_s"] = round(time.monotonic() - started)
        info = {"layout": LAYOUT, "runs": runs, "flow_rows": flow_rows, "t0": t0.isoformat(), "hot": hot, **timings}
        cursor.execute("INSERT INTO bench_scale_meta VALUES (%s)", [json.dumps(info)])
    analyze()
    return info


def refill(info: dict, upto: int) -> None:
    """Generate runs 1..``upto`` again where missing (after a prune), with their steps."""
    from django.db import connection

    t0 = datetime.fromisoformat(info["t0"])
    hot, user_prefix = keys()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute(*_run_sql(info["runs"], t0, hot, user_prefix, upto))
        restored = cursor.rowcount
        last = t0 - (info["runs"] - upto) * timedelta(seconds=DAYS * 86400 / info["runs"])
        cursor.execute(_step_sql(f"r.status IN {FINISHED} AND r.created_at <= '{last.isoformat()}'::timestamptz"))
        log(f"refill: {restored} runs and {cursor.rowcount} steps generated again")


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("celery_durable_run", "celery_durable_step", "celery_durable_flowstate", "celery_durable_slot"):
            started = time.monotonic()
            cursor.execute(f"VACUUM ANALYZE {table}")
            log(f"VACUUM ANALYZE {table}: {time.monotonic() - started:.0f} s")


def freshen() -> None:
    """Make the live rows idle *now*: nothing due, no lost message, no expired lease.

    Then VACUUM the run table: the previous phase's restores left dead index entries right
    at "now" in the waker's index, which an index scan would walk (as if autovacuum lagged).
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE celery_durable_run SET published_at = now() WHERE status = 'queued'")
        cursor.execute(
            "UPDATE celery_durable_run SET lease_expires_at = now() + interval '1 day' "
            "WHERE status = 'running' AND lease_expires_at < now() + interval '1 hour'"
        )
        cursor.execute("SELECT min(wake_at) - now() FROM celery_durable_run WHERE status = 'sleeping'")
        ahead = cursor.fetchone()[0]
        if ahead is not None and ahead.total_seconds() < 1800:
            cursor.execute(
                "UPDATE celery_durable_run SET wake_at = wake_at + (now() + interval '1 hour' - "
                "(SELECT min(wake_at) FROM celery_durable_run WHERE status = 'sleeping')) WHERE status = 'sleeping'"
            )
            log(f"freshen: sleeping runs moved out (nearest wake was {ahead} ahead)")
        cursor.execute("VACUUM celery_durable_run")


def describe() -> dict:
    """Row counts and sizes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM celery_durable_run GROUP BY status ORDER BY status")
        counts = dict(cursor.fetchall())
        cursor.execute(
            "SELECT (SELECT reltuples::bigint FROM pg_class WHERE relname = 'celery_durable_step'), "
            "(SELECT count(*) FROM celery_durable_flowstate), "
            "pg_size_pretty(pg_total_relation_size('celery_durable_run')), "
            "pg_size_pretty(pg_total_relation_size('celery_durable_step')), "
            "pg_size_pretty(pg_database_size(current_database()))"
        )
        steps, flows, run_size, step_size, db_size = cursor.fetchone()
    return {
        "statuses": counts,
        "runs": sum(counts.values()),
        "steps_estimate": steps,
        "flow_rows": flows,
        "run_table": run_size,
        "step_table": step_size,
        "database": db_size,
    }
