"""The phases of bench/flow_control.py (method in its docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import harness

ROOT = harness.ROOT
VAR = harness.VAR
PGIDS = VAR / "flow-worker-pgids"
IDLE_QUEUE = "bench_fc_idle"
QUEUE = "bench"  # settings.CELERY_TASK_DEFAULT_QUEUE: where the runs' messages go
QUEUE_KEYS = [QUEUE, *(f"{QUEUE}\x06\x16{p}" for p in (3, 6, 9))]
KEY = "one-key"
LIMIT = 5
DBOS_DB = "dbos_bench"


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()


class Worker(harness.Worker):
    """harness.Worker running ``bench.flow_app``, its process group listed in our own file."""

    def __init__(self, queue: str, concurrency: int, phase: str, env: dict[str, str] | None = None) -> None:
        host = f"fc-{phase}-{uuid.uuid4().hex[:6]}@localhost"
        super().__init__(queue, host, 900, VAR / f"flow-worker-{phase}.log", concurrency)
        self.cmd[self.cmd.index("bench.celery_app")] = "bench.flow_app"
        self.env = env or {}

    def start(self) -> None:
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            )
        with PGIDS.open("a") as f:
            f.write(f"{self.proc.pid}\n")


@contextlib.contextmanager
def running(queue: str, concurrency: int, phase: str, env: dict[str, str] | None = None):
    from bench.flow_app import app

    worker = Worker(queue, concurrency, phase, env)
    worker.start()
    try:
        worker.wait_ready(app)
        yield worker
    finally:
        code = worker.stop()
        if code not in (0, None):
            log(f"worker {phase} exited with {code}; log {worker.log_path}")


def leftovers() -> list[int]:
    """Worker processes still alive in a process group we started (killed if found)."""
    alive: list[int] = []
    for pgid in [int(x) for x in PGIDS.read_text().split()] if PGIDS.exists() else []:
        pids = harness.group_pids(pgid)
        if pids:
            alive.extend(pids)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    return alive


def setup() -> None:
    import django
    import redis
    from django.conf import settings

    VAR.mkdir(parents=True, exist_ok=True)
    PGIDS.write_text("")
    with admin() as conn:
        for name in (harness_db(), DBOS_DB):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    django.setup()
    assert settings.DATABASES["default"]["NAME"] == harness_db()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from bench.flow_app import app

    assert app.conf.broker_url.endswith("/10"), app.conf.broker_url
    redis.Redis.from_url(app.conf.broker_url).flushdb()
    app.set_default()


def harness_db() -> str:
    return os.environ["BENCH_PG_NAME"]


def admin():
    import psycopg

    return psycopg.connect(**harness.pg_conninfo("postgres"), autocommit=True)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import redis

    out = {"python": platform.python_version()}
    for package in ("celery", "kombu", "billiard", "Django", "psycopg", "redis", "dbos", "SQLAlchemy"):
        try:
            out[package] = version(package)
        except Exception:
            out[package] = "not installed"
    with admin() as conn:
        out["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    out["redis-server"] = redis.Redis(host="127.0.0.1").info("server")["redis_version"]
    out["cpus"] = str(os.cpu_count())
    out["kernel"] = platform.release()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            out["cpu"] = line.split(":", 1)[1].strip()
            break
    git = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 10}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_durable"], **git).stdout
    out["celery-durable commit"] = head + (" (celery_durable/ modified)" if dirty else "")
    return out


# --- figures -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def timing(starts: list[float], finishes: list[float]) -> dict[str, Any]:
    """Rate over the span of the runs, and hand-off: k-th start minus the (k-LIMIT)-th finish (seconds in, ms out)."""
    starts, finishes = sorted(starts), sorted(finishes)
    n = len(finishes)
    span = finishes[-1] - starts[0] if n else float("nan")
    gaps = [1000 * (starts[k] - finishes[k - LIMIT]) for k in range(LIMIT, len(starts)) if k - LIMIT < n]
    out: dict[str, Any] = {"n": n, "span_s": span, "rate_per_s": n / span if n and span > 0 else float("nan")}
    if gaps:
        out |= {"handoff_p50_ms": pct(gaps, 50), "handoff_p99_ms": pct(gaps, 99), "handoff_max_ms": max(gaps)}
        out["handoff_min_ms"] = min(gaps)  # >= 0 unless the limit was exceeded
    return out


def run_times(task: str) -> tuple[list[float], list[float]]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at) FROM celery_durable_run"
            " WHERE task_name = %s AND status = 'completed'",
            [task],
        )
        rows = cur.fetchall()
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]


def hop_ms(task: str) -> dict[str, float]:
    """Promotion -> claim per run (``published_at`` is set by the promotion): broker hop, dispatch, claim."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT 1000 * extract(epoch FROM started_at - published_at) FROM celery_durable_run"
            " WHERE task_name = %s AND status = 'completed' AND published_at IS NOT NULL",
            [task],
        )
        hops = [float(r[0]) for r in cur.fetchall()]
    return {"hop_p50_ms": pct(hops, 50), "hop_p99_ms": pct(hops, 99)}


def completed(task: str) -> int:
    from celery_durable.models import Run

    return Run.objects.filter(task_name=task, status="completed").count()


def broker():
    import redis

    from bench.flow_app import app

    return redis.Redis.from_url(app.conf.broker_url)


def enqueue(task: Any, n: int, *extra: Any) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        task.delay(KEY, i, *extra)
    return n / (time.perf_counter() - t0)


def wait_completed(task: str, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while completed(task) < n:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{task}: {completed(task)} of {n} completed after {timeout:.0f}s")
        time.sleep(0.05)
    return time.perf_counter() - t0


def start_consuming(worker: Worker) -> None:
    from bench.flow_app import app, noop

    reply = app.control.add_consumer(QUEUE, destination=[worker.hostname], reply=True, timeout=5)
    if not reply:
        raise RuntimeError(f"add_consumer: no reply from {worker.hostname}")
    noop.apply_async(queue=IDLE_QUEUE)  # wakes the worker from its 1 s BRPOP on the idle queue


# --- phases ------------------------------------------------------------------------------


def drain(kind: str, n: int) -> dict[str, Any]:
    """N runs on one key enqueued with the worker away, then drained by a prefork -c 2 worker."""
    from bench import flow_app
    from celery_durable.models import Run

    task = {"free": flow_app.free, "limited": flow_app.limited, "give-back": flow_app.limited}[kind]
    env = {"BENCH_FC_GIVE_BACK": "1"} if kind == "give-back" else {}
    Run.objects.filter(task_name=task.name).delete()  # "give-back" drains the same task again
    log(f"drain {kind}: enqueue {n}")
    with running(IDLE_QUEUE, 2, kind, env) as worker:
        enqueue_rate = enqueue(task, n)
        statuses = dict(Run.objects.filter(task_name=task.name).values_list("status").annotate(c=_count()))
        messages = sum(broker().llen(k) for k in QUEUE_KEYS)
        log(f"drain {kind}: {statuses}, {messages} messages; add_consumer")
        load1 = os.getloadavg()[0]
        busy0 = harness.machine_jiffies()
        cpu0 = worker.cpu()
        wall = wait_completed_after(worker, task.name, n)
        busy1 = harness.machine_jiffies()
        worker_cpu = worker.cpu() - cpu0
    starts, finishes = run_times(task.name)
    figures = timing(starts, finishes) | (hop_ms(task.name) if kind != "free" else {})
    log(f"drain {kind}: {figures['rate_per_s']:.0f}/s over the run rows, {n / wall:.0f}/s wall")
    return {
        **figures,
        "statuses_before": statuses,
        "messages_before": messages,
        "enqueue_per_s": enqueue_rate,
        "wall_s": wall,
        "wall_rate_per_s": n / wall,
        "worker_cpu_ms_per_run": 1000 * worker_cpu / n,
        "machine_busy_pct": 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "load1": load1,
    }


def _count():
    from django.db.models import Count

    return Count("id")


def wait_completed_after(worker: Worker, task: str, n: int) -> float:
    start_consuming(worker)
    return wait_completed(task, n, timeout=max(120.0, n / 5))


def handoff(m: int, limited: bool = True, pool: int = LIMIT + 1) -> dict[str, Any]:
    """M runs of a 10 ms body on the limited key, ``pool`` processes: hand-off without saturation.

    ``limited=False``: the same body and pool without the limit (``paced_free``), the rate the
    limited drain is compared with when the machine, not the limit, sets the pace.
    """
    from bench import flow_app
    from celery_durable.models import Run

    task = flow_app.paced if limited else flow_app.paced_free
    log(f"handoff ({task.name}): enqueue {m}")
    with running(IDLE_QUEUE, pool, "handoff" if limited else "handoff-free") as worker:
        enqueue(task, m, 0.01)
        busy0 = harness.machine_jiffies()
        wall = wait_completed_after(worker, task.name, m)
        busy1 = harness.machine_jiffies()
    starts, finishes = run_times(task.name)
    figures = timing(starts, finishes) | hop_ms(task.name)
    if limited:
        done = Run.objects.filter(task_name=task.name, status="completed")
        body_starts = [float(result) for result in done.values_list("result", flat=True)]
        body = timing(body_starts, finishes)  # k-th body start - (k-LIMIT)-th completion
        figures |= {"body_handoff_p50_ms": body["handoff_p50_ms"], "body_handoff_p99_ms": body["handoff_p99_ms"]}
        p50, p99 = figures["body_handoff_p50_ms"], figures["body_handoff_p99_ms"]
        log(f"handoff: completion to the next body p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    log(f"handoff: hop p50 {figures['hop_p50_ms']:.1f} ms, p99 {figures['hop_p99_ms']:.1f} ms")
    log(f"handoff: p50 {figures['handoff_p50_ms']:.1f} ms, p99 {figures['handoff_p99_ms']:.1f} ms")
    busy = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    return {**figures, "wall_s": wall, "machine_busy_pct": busy, "pool": pool}


def blocked(pending: int, seconds: float) -> dict[str, Any]:
    """CPU and commits over ``seconds``: an idle worker, then 5 slot holders + a backlog."""
    from django.db import connections

    from bench import flow_app
    from celery_durable.models import Run

    monitor = harness.Monitor()
    out: dict[str, Any] = {"pending": pending, "seconds": seconds}
    try:
        with running(QUEUE, LIMIT, "blocked") as worker:
            time.sleep(3)  # start-up settled (first service tick, pool children connected)
            out["idle"] = sample(worker, monitor, seconds)
            hold = seconds + 8
            for i in range(LIMIT):
                flow_app.paced.delay(KEY, i, hold)
            enqueue(flow_app.paced, pending, 0.0)
            t0 = time.monotonic()
            while Run.objects.filter(task_name=flow_app.paced.name, status="running").count() < LIMIT:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("the 5 slot holders did not start")
                time.sleep(0.05)
            # Our own session ends: its statistics (the enqueue) are flushed before the window.
            connections.close_all()
            time.sleep(1)
            out["blocked"] = sample(worker, monitor, seconds)
            out["statuses"] = dict(
                Run.objects.filter(task_name=flow_app.paced.name).values_list("status").annotate(c=_count())
            )
    finally:
        monitor.close()
    for phase in ("idle", "blocked"):
        s = out[phase]
        log(f"blocked/{phase}: worker {s['worker_cpu_ms_per_s']:.2f} ms/s, pg {s['pg_cpu_ms_per_s']:.2f} ms/s")
    return out


def sample(worker: Worker, monitor: harness.Monitor, seconds: float) -> dict[str, Any]:
    s0 = monitor.statements
    stats0 = monitor.execute(STATS_SQL).fetchone()
    pg0 = monitor.backend_cpu()
    all0 = harness.service_cpu("postgres")
    cpu0 = worker.cpu()
    t0 = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - t0
    cpu1 = worker.cpu()
    all1 = harness.service_cpu("postgres")
    pg1 = monitor.backend_cpu()
    stats1 = monitor.execute(STATS_SQL).fetchone()
    own = monitor.statements - s0 - 1  # the monitor's own transactions in between (each one commit)
    pg = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
    return {
        "seconds": elapsed,
        "worker_cpu_ms_per_s": 1000 * (cpu1 - cpu0) / elapsed,
        "pg_cpu_ms_per_s": 1000 * pg / elapsed,
        # every postgres process: other users' sessions too, and sessions opened and closed meanwhile
        "pg_all_cpu_ms_per_s": 1000 * (all1 - all0) / elapsed,
        "commits_per_s": (stats1[0] - stats0[0] - own) / elapsed,
        "tuples_read_per_s": (stats1[1] - stats0[1]) / elapsed,
        "backends": len(pg1),
    }


STATS_SQL = (
    "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database"
    " WHERE datname = current_database()"
)


# --- DBOS ----------------------------------------------------------------------------------


def dbos_step(argv: list[str], limit: float) -> dict[str, Any]:
    cmd = ["timeout", "-k", "10", str(int(limit)), sys.executable, str(ROOT / "bench" / "flow_dbos.py"), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"flow_dbos.py {' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dbos_times(since_ms: int) -> tuple[list[float], list[float]]:
    import psycopg

    with psycopg.connect(**harness.pg_conninfo(DBOS_DB)) as conn:
        rows = conn.execute(
            "SELECT started_at_epoch_ms, completed_at FROM dbos.workflow_status"
            " WHERE status = 'SUCCESS' AND started_at_epoch_ms >= %s",
            [since_ms],
        ).fetchall()
    return [r[0] / 1000 for r in rows], [r[1] / 1000 for r in rows]


def dbos(n: int, seconds: float, fast_seconds: float) -> dict[str, Any]:
    log(f"dbos: enqueue {n}")
    out: dict[str, Any] = {"enqueue": dbos_step(["--role", "enqueue", "--runs", str(n)], 60 + n / 20)}
    for label, polling, window in (("default", 1.0, seconds), ("fast", 0.01, fast_seconds)):
        dbos_step(["--role", "configure", "--polling", str(polling)], 60)
        log(f"dbos {label}: polling {polling}s, up to {window:.0f}s")
        busy0 = harness.machine_jiffies()
        run = dbos_step(["--role", "execute", "--until", str(n), "--seconds", str(window)], window + 120)
        busy1 = harness.machine_jiffies()
        starts, finishes = dbos_times(run["since_ms"])
        figures = timing(starts, finishes)
        figures["machine_busy_pct"] = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        out[label] = {"polling_s": polling, **run, **figures}
        log(f"dbos {label}: {figures['n']} workflows, {figures['rate_per_s']:.1f}/s")
    return out
