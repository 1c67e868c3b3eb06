"""The measured operations of bench/scale.py; each phase returns its figures and leaves the data as it found it."""

from __future__ import annotations

import inspect
import platform
import random
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from bench.scale_measure import flush_broker, log, measure, pick, pool, restore, snapshot, sql, summary

ROOT = Path(__file__).resolve().parent.parent
FINISHED = "status IN ('completed', 'failed', 'cancelled')"


def versions() -> dict:
    import celery
    import django
    import psycopg
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        buffers = cursor.fetchone()[0]
    git = ["git", "-C", str(ROOT)]
    dirty = subprocess.run([*git, "status", "--porcelain", "celery_durable"], capture_output=True, text=True).stdout
    return {
        "commit": subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "celery_durable_uncommitted": [line[3:] for line in dirty.splitlines()],
        "python": platform.python_version(),
        "django": django.get_version(),
        "celery": celery.__version__,
        "psycopg": psycopg.__version__,
        "postgresql": server,
        "shared_buffers": buffers,
        "cpus": __import__("os").cpu_count(),
    }


def _tick():
    from bench.scale_app import app
    from celery_durable.integration.services import tick

    return app, tick, "backstops" in inspect.signature(tick).parameters


def tick_idle(args, info) -> dict:
    from django.db import connections

    app, tick, has_backstops = _tick()

    def idle(_ctx, report) -> None:
        assert not any(vars(report).values()), f"the tick found work: {report}"

    out = {"tick": measure("tick idle", lambda _: tick(app), args.reps * 3, 100, check=idle)}
    if has_backstops:  # the services loop runs the slot backstops every N ticks only
        out["tick_no_backstops"] = measure(
            "tick idle, no backstops", lambda _: tick(app, backstops=False), args.reps * 3, 100, check=idle
        )

    def reconnect(_ctx):
        report = tick(app)
        connections.close_all()  # what ServiceThread does after every tick
        return report

    out["tick_reconnect"] = measure("tick idle + reconnect", reconnect, args.reps, 0, check=idle)
    return out


def _due_tick(name: str, where: str, count: int, change: str, field: str, args) -> dict:
    app, tick, _ = _tick()
    count = min(count, len(pool(where)))  # a small test dataset has fewer

    def setup():
        ids = pick(where, count)
        rows = snapshot(ids)
        sql(f"UPDATE celery_durable_run SET {change} WHERE id = ANY(%s)", [ids])
        return rows

    def teardown(rows) -> None:
        restore(rows)
        flush_broker()

    def check(_rows, report) -> None:
        assert getattr(report, field) == count, f"{name}: {report}"

    return {
        "batch": count,
        "tick": measure(name, lambda _: tick(app), max(20, args.reps // 10), 10, setup, teardown, check),
    }


def tick_due(args, info) -> dict:
    from celery_durable.conf import get_settings

    batch = get_settings().WAKER_BATCH_SIZE
    change = "wake_at = now() - interval '1 second'"
    return _due_tick(f"tick, {batch} due", "status = 'sleeping'", batch, change, "woken", args)


def sweeper(args, info) -> dict:
    change = "published_at = now() - interval '10 minutes'"
    return _due_tick("tick, 100 lost messages", "status = 'queued'", 100, change, "republished", args)


def reaper(args, info) -> dict:
    change = "lease_expires_at = now() - interval '1 minute'"
    where = "status = 'running' AND NOT holds_slots"
    return _due_tick("tick, 100 expired leases", where, 100, change, "recovered", args)


def admission(args, info) -> dict:
    from bench.scale_app import idem, keyed, plain, throttled
    from celery_durable.models import Run

    created: list[str] = []
    touched: list[str] = []
    idem_rows = int(info["flow_rows"] * 0.6)
    throttle_keys = iter(random.sample(range(1, info["flow_rows"] - idem_rows + 1), args.reps + 80))

    def status_is(expected: str):
        def check(_ctx, result) -> None:
            status = Run.objects.filter(id=result.id).values_list("status", flat=True).first()
            assert status == expected, (result.id, status, expected)
            created.append(result.id)

        return check

    def throttled_call(_ctx):
        key = f"k{next(throttle_keys)}"
        touched.append(f"throttle:bench.scale.throttled:{key}")
        return throttled.delay(key=key)

    def existing(_ctx, result) -> None:
        assert Run.objects.filter(id=result.id, created_at__lt=info["t0"]).exists(), result.id

    reps = args.reps
    out = {}
    try:
        out["plain"] = measure("delay, no flow control", lambda _: plain.delay(1), reps, 30, check=status_is("queued"))
        out["hot_backlog"] = measure(
            "delay, Concurrency key with a deep backlog", lambda _: keyed.delay("hot", 1), reps, 30,
            check=status_is("pending"),
        )  # fmt: skip
        out["free_key"] = measure(
            "delay, Concurrency on a new key (slot free)", lambda _: keyed.delay(f"free-{uuid.uuid4().hex[:12]}", 1),
            reps, 30, check=status_is("queued"),
        )  # fmt: skip
        out["idempotency_existing"] = measure(
            "delay, idempotency key held (1M flow rows)",
            lambda _: idem.delay(key=f"k{random.randint(1, idem_rows)}"), reps, 30, check=existing,
        )  # fmt: skip
        out["idempotency_new"] = measure(
            "delay, new idempotency key (1M flow rows)", lambda _: idem.delay(key=f"new-{uuid.uuid4().hex}"),
            reps, 30, check=status_is("queued"),
        )  # fmt: skip
        out["throttle"] = measure(
            "delay, throttle key (1M flow rows)", throttled_call, reps, 30, check=status_is("queued")
        )
        with_backlog = Run.objects.filter(status="pending", slot_key1=info["hot"]).count()
        out["hot_backlog_depth"] = with_backlog
    finally:
        sql("DELETE FROM celery_durable_step WHERE run_id = ANY(%s)", [created])
        sql("DELETE FROM celery_durable_run WHERE id = ANY(%s)", [created])
        sql("DELETE FROM celery_durable_flowstate WHERE name LIKE 'idempotency_key:bench.scale.idem:new-%%'")
        sql("DELETE FROM celery_durable_slot WHERE key LIKE '%%:free-%%'")
        t0 = datetime.fromisoformat(info["t0"])
        sql("UPDATE celery_durable_flowstate SET tat = %s WHERE name = ANY(%s)", [t0 - timedelta(days=1), touched])
        flush_broker()
    return out


def slot_hold(args, info) -> dict:
    """How long one hot key's slot row stays locked per run: intake (take) and finish (give back).

    Every run of a key with free slots updates the key's single ``Slot`` row twice, each in a
    transaction that holds the row lock until COMMIT: those stretches are serial per key.
    """
    from django.db import connection

    from bench.scale_app import roomy
    from celery_durable.store import slots

    marks: list[tuple[str, float]] = []

    def tracer(execute, sql_text, params, many, context):
        if sql_text.startswith('UPDATE "celery_durable_slot"'):
            marks.append(("slot", time.perf_counter()))
        return execute(sql_text, params, many, context)

    commit = connection._commit

    def traced_commit():
        result = commit()
        marks.append(("commit", time.perf_counter()))
        return result

    take, give, created = [], [], []

    def held() -> float:
        first = next(t for kind, t in marks if kind == "slot")
        return (next(t for kind, t in marks if kind == "commit" and t > first) - first) * 1000

    connection._commit = traced_commit
    try:
        with connection.execute_wrapper(tracer):
            for i in range(args.reps + 10):
                marks.clear()
                run_id = roomy.delay("hot-free", i).id
                created.append(run_id)
                take.append(held())
                sql("UPDATE celery_durable_run SET status = 'completed', finished_at = now() WHERE id = %s", [run_id])
                marks.clear()
                slots.release(run_id)
                give.append(held())
    finally:
        connection._commit = commit
        sql("DELETE FROM celery_durable_step WHERE run_id = ANY(%s)", [created])
        sql("DELETE FROM celery_durable_run WHERE id = ANY(%s)", [created])
        sql("DELETE FROM celery_durable_slot WHERE key LIKE '%%:hot-free'")
        flush_broker()
    out = {"take_ms": summary(take[10:]), "give_ms": summary(give[10:])}
    per_run = out["take_ms"]["p50"] + out["give_ms"]["p50"]
    out["serial_ceiling_runs_per_s"] = round(1000 / per_run)
    log(f"slot row held per run: take p50 {out['take_ms']['p50']:.2f} ms, give p50 {out['give_ms']['p50']:.2f} ms")
    return out


def handoff(args, info) -> dict:
    from bench.scale_app import app
    from bench.scale_data import keys
    from celery_durable.integration.publish import publish_all
    from celery_durable.models import Run
    from celery_durable.store import slots

    user_key = keys()[1].strip("'") + "7"

    def for_key(key: str):
        def setup():
            holder = Run.objects.filter(slot_key1=key, holds_slots=True, status__in=("queued", "running"))
            head = Run.objects.filter(status="pending", slot_key1=key).order_by("backlog_at")
            ids = [holder.values_list("id", flat=True)[0], head.values_list("id", flat=True)[0]]
            rows = snapshot(ids)
            sql(
                "UPDATE celery_durable_run SET status = 'completed', finished_at = now(), lease_owner = NULL, "
                "lease_expires_at = NULL WHERE id = %s",
                [ids[0]],
            )
            return ids, rows

        def check(ctx, handed) -> None:
            head = Run.objects.get(id=ctx[0][1])
            assert handed == 1 and head.status == "queued" and head.holds_slots, (handed, head.status)

        return dict(
            setup=setup, teardown=lambda ctx: (restore(ctx[1]), flush_broker()), check=check
        )  # fmt: skip

    def release(ctx):
        return publish_all(app, slots.release(ctx[0][0]))

    depth = {k: Run.objects.filter(status="pending", slot_key1=k).count() for k in (info["hot"], user_key)}
    return {
        "backlog": depth,
        "hot": measure(f"hand-off, backlog {depth[info['hot']]}", release, args.reps, 30, **for_key(info["hot"])),
        "user": measure(f"hand-off, backlog {depth[user_key]}", release, args.reps, 30, **for_key(user_key)),
    }


def changelist(args, info) -> dict:
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)

    def get(url: str):
        return lambda _ctx: client.get(url)

    def ok(_ctx, response) -> None:
        assert response.status_code == 200, response.status_code

    reps = max(30, args.reps // 10)
    page = reverse("admin:celery_durable_run_changelist")
    dashboard = reverse("admin:celery_durable_run_dashboard")
    return {
        "changelist": measure("changelist, default page", get(page), reps, 10, check=ok),
        "dashboard": measure("dashboard", get(dashboard), reps // 2, 5, check=ok),
    }
