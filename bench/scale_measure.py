"""Helpers of bench/scale.py: timing, auto_explain capture, row snapshots."""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "max": max(values)}


class Explainer:
    """auto_explain on this session: each statement's executor time and plan, as notices."""

    def __init__(self) -> None:
        self.on = False
        self.session = None
        self.records: list[tuple[float, dict]] = []
        self.taken: list[tuple[float, dict]] = []

    def _notice(self, diagnostic) -> None:
        text = diagnostic.message_primary or ""
        if self.on and text.startswith("duration:"):
            head, _, body = text.partition("plan:")
            self.records.append((float(head.split()[1]), json.loads(body)))

    @contextlib.contextmanager
    def active(self):
        from django.db import connection

        connection.ensure_connection()
        with connection.cursor() as cursor:
            if self.session is not connection.connection:  # a new session: load it again
                connection.connection.add_notice_handler(self._notice)
                cursor.execute("LOAD 'auto_explain'")
                self.session = connection.connection
            for setting in ("log_analyze = on", "log_buffers = on", "log_timing = off", "log_format = json"):
                cursor.execute(f"SET auto_explain.{setting}")
            cursor.execute("SET auto_explain.log_level = notice")
            cursor.execute("SET client_min_messages = notice")
            cursor.execute("SET auto_explain.log_min_duration = 0")
        try:
            yield self
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET auto_explain.log_min_duration = -1")

    @contextlib.contextmanager
    def collect(self):
        start = len(self.records)
        self.on = True
        try:
            yield
        finally:
            self.on = False
            self.taken = self.records[start:]


def plan_nodes(plan: dict) -> list[str]:
    """Scan and modify nodes of a plan: "Index Scan durable_run_due", "Seq Scan celery_durable_slot"."""
    out = []
    node = plan["Node Type"]
    if "Index Name" in plan:
        out.append(f"{node} {plan['Index Name']}")
    elif node == "ModifyTable":
        out.append(f"{plan.get('Operation', 'Modify')} {plan.get('Relation Name', '')}")
    elif "Relation Name" in plan:
        out.append(f"{node} {plan['Relation Name']}")
    for child in plan.get("Plans", []):
        out += plan_nodes(child)
    return out


def statement_summary(records: list[tuple[float, dict]]) -> list[dict]:
    rows = []
    for duration, doc in records:
        text = " ".join(doc.get("Query Text", "").split())
        rows.append({"ms": duration, "sql": text[:90], "nodes": plan_nodes(doc["Plan"])})
    return rows


def measure(name, op, reps: int, explain_reps: int, setup=None, teardown=None, check=None, warm: int = 3) -> dict:
    """Time ``op(ctx)`` ``reps`` times, then ``explain_reps`` times under auto_explain (server time).

    ``setup()`` makes the context before each call and ``teardown(ctx)`` undoes the call's
    changes; neither is timed, counted or explained.
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def once(timer: list[float], around=contextlib.nullcontext) -> object:
        ctx = setup() if setup else None
        try:
            with around():
                t = time.perf_counter()
                result = op(ctx)
                timer.append((time.perf_counter() - t) * 1000)
            if check is not None:
                check(ctx, result)
        finally:
            if teardown:
                teardown(ctx)
        return result

    for _ in range(warm):
        once([])
    wall: list[float] = []
    for _ in range(reps):
        once(wall)
    captured = CaptureQueriesContext(connection)
    once([], lambda: captured)
    markers = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")
    queries = sum(1 for q in captured.captured_queries if not q["sql"].startswith(markers))
    server, plans = [], []
    with EXPLAINER.active():
        for _ in range(explain_reps):
            once([], EXPLAINER.collect)
            server.append(sum(ms for ms, _doc in EXPLAINER.taken))
            plans = plans or statement_summary(EXPLAINER.taken)
    shown = f"; server p50 {pct(server, 50):.2f} ms" if server else ""
    log(f"{name}: p50 {pct(wall, 50):.2f} ms, p99 {pct(wall, 99):.2f} ms{shown}")
    return {
        "wall_ms": summary(wall),
        "server_ms": summary(server) if server else None,
        "statements": queries,
        "plans": plans,
    }


EXPLAINER = Explainer()


# --- row snapshots: every rep puts back what it changed ------------------------------------

COLUMNS = ("status", "wake_at", "published_at", "waiting_for", "finished_at", "lease_owner", "lease_expires_at",
           "recoveries", "holds_slots", "started_at")  # fmt: skip


def snapshot(ids: list[str]) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, {', '.join(COLUMNS)} FROM celery_durable_run WHERE id = ANY(%s)", [ids])
        return cursor.fetchall()


def restore(rows: list[tuple]) -> None:
    from django.db import connection

    sets = ", ".join(f"{c} = v.{c}" for c in COLUMNS)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE celery_durable_run r SET {sets} FROM (SELECT %s AS id, "
            + ", ".join(f"%s::{t} AS {c}" for c, t in zip(COLUMNS, TYPES, strict=True))
            + ") v WHERE r.id = v.id",
            rows,
        )


TYPES = ("text", "timestamptz", "timestamptz", "text", "timestamptz", "text", "timestamptz", "int", "bool",
         "timestamptz")  # fmt: skip


_pools: dict[str, list[str]] = {}


def pool(where: str) -> list[str]:
    """The ids of the runs matching ``where`` (read once per condition)."""
    from django.db import connection

    if where not in _pools:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM celery_durable_run WHERE {where}")
            _pools[where] = [row[0] for row in cursor.fetchall()]
    return _pools[where]


def pick(where: str, count: int) -> list[str]:
    """``count`` random ids of the runs matching ``where``."""
    return random.sample(pool(where), count)


def sql(statement: str, params: list | None = None) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])


def flush_broker() -> None:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
