"""celery-durable suspension benchmarks (issue 3): waker lateness, waker query cost, event fan-in.

    .venv/bin/python bench/suspension.py --quick   # ~4 min on 2 cores (2,000 runs due at once)
    .venv/bin/python bench/suspension.py           # ~15 min: 10,000 runs due at once

Both use 1,000,000 sleeping rows for the query phase: generating them takes ~4 min more the
first time (and after a migration); later runs reuse them (``--regenerate`` forces it).
Results are recorded in docs/benchmarks.md, section "Suspension (issue 3)".

Three phases, each in its own subprocess under ``timeout`` (``--only`` picks some):

* ``lateness``: N durable runs, created through the real API (``apply_async``), execute on a
  real ``celery worker -P prefork -c 2`` (Redis broker, PostgreSQL) and suspend in
  ``step.sleep_until`` with the same ``wake_at`` (a whole second). The worker's own waker
  (``integration/services.py::tick``) wakes them. Per run: lateness = the sleep step's
  ``finished_at`` (set when the resumed execution passes the sleep) - ``wake_at``.
* ``query``: 1,000,000 sleeping runs (each with its pending sleep step) bulk-generated with
  ``INSERT ... SELECT generate_series`` in a dedicated database, ``VACUUM ANALYZE``, nothing
  due. ``tick()`` runs in-process many times (connection kept, and connection re-opened each
  tick as the worker's service thread does); each ``take_*`` query is captured with
  ``CaptureQueriesContext`` and shown with ``EXPLAIN (ANALYZE, BUFFERS)``.
* ``events``: a warm worker; time from ``send_event`` to the resumed run's next step
  (``step.run`` recording ``time.time()``), one waiting run at a time and with a crowd of
  runs waiting on the same event name; baselines: a plain Celery task hop and a durable run's
  first step, on the same worker.

Dedicated resources: PostgreSQL databases ``durable_suspension_bench`` (lateness, events) and
``durable_waker_bench`` (query), dropped and re-created by each run; Redis db 11 (flushed).
The settings module is bench/settings.py (environment: ``BENCH_PG_NAME``, ``BENCH_BROKER_DB``,
``BENCH_RESULTS=none``, ``BENCH_DB_REUSE=1``). Workers are killed and reaped after each phase;
their process groups are listed in var/bench/suspension-worker-pgids and checked for
leftovers at the end.
Results also go to var/bench/suspension-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUN_DB = "durable_suspension_bench"
WAKER_DB = "durable_waker_bench"
BROKER_DB = "11"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
os.environ.setdefault("BENCH_PG_NAME", RUN_DB)
os.environ.setdefault("BENCH_BROKER_DB", BROKER_DB)
os.environ.setdefault("BENCH_RESULTS", "none")

from celery import Celery, shared_task  # noqa: E402

import celery_durable  # noqa: E402
from celery_durable import durable_task, step  # noqa: E402

# CELERY_DURABLE overrides for an experiment (JSON), applied in the driver and the workers alike.
if os.environ.get("BENCH_SUSPENSION_DURABLE"):
    from django.conf import settings as _django_settings

    _django_settings.CELERY_DURABLE = {
        **(getattr(_django_settings, "CELERY_DURABLE", None) or {}),
        **json.loads(os.environ["BENCH_SUSPENSION_DURABLE"]),
    }

app = Celery("bench_suspension")
app.config_from_object("django.conf:settings", namespace="CELERY")
celery_durable.install(app)

VAR = ROOT / "var" / "bench"
PGIDS = VAR / "suspension-worker-pgids"
CLK_TCK = os.sysconf("SC_CLK_TCK")
EVENT = "bench.susp.go"
STAMPS = "bench:susp:stamps"
SLEEPER = "bench.susp.sleeper"
DASH = "\u2013"


# --- tasks (registered in the workers: celery -A bench.suspension) ----------------------


@durable_task(name=SLEEPER)
def sleeper(wake_at, tag=""):
    """Suspend until ``wake_at`` (ISO text, the same for every run of a batch), then one step."""
    step.sleep_until("s", datetime.fromisoformat(wake_at))
    return step.run("after", int, 1)


@durable_task(name="bench.susp.waiter")
def waiter(key):
    """Wait for the event with this key; the next step records when the resumed run executes it."""
    step.wait_for_event("w", EVENT, match={"key": key}, timeout=3600)
    return step.run("t", time.time)


@durable_task(name="bench.susp.starter")
def starter():
    """Baseline: a durable run's first step records when it executes."""
    return step.run("t", time.time)


@durable_task(name="bench.susp.warm")
def warm():
    return step.run("one", int, 1)


@shared_task(name="bench.susp.stamp")
def stamp(token):
    """Baseline: a plain Celery task pushes the time it ran to Redis."""
    import redis

    redis.Redis.from_url(app.conf.broker_url).rpush(STAMPS, json.dumps([token, time.time()]))


# --- helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def pct(values: list[float], q: float) -> float:
    """Percentile ``q`` (0-100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


# --- processes (self-contained: /proc only) -----------------------------------------------


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """(command name, fields from field 3 on) of /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()


def process_table() -> dict[int, tuple[str, int, float]]:
    """Every live process: pid -> (command name, process group, CPU seconds so far)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            comm, fields = stat
            table[int(entry)] = (comm, int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def group_pids(pgid: int) -> list[int]:
    """Live processes (zombies excluded) of a process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            fields = stat[1]
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


SERVICES = ("postgres", "redis-server")


class Worker:
    """A ``celery -A bench.suspension worker -P prefork -c 2`` subprocess under ``timeout``, in its own group."""

    def __init__(self, hostname: str, limit: float, log_path: Path, concurrency: int = 2) -> None:
        self.hostname = hostname
        self.log_path = log_path
        self.cmd = [
            "timeout", "-k", "10", str(int(limit)),
            sys.executable, "-m", "celery", "-A", "bench.suspension", "worker",
            "-P", "prefork", "-c", str(concurrency), "-Q", "bench", "-n", hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        VAR.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        with PGIDS.open("a") as f:
            f.write(f"{self.proc.pid}\n")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log: {self.log_path}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return  # the pool children are forked before the consumer answers
        raise RuntimeError(f"worker not ready after {timeout}s; log: {self.log_path}")

    def cpu(self) -> float:
        table = process_table()
        return sum(cpu for _comm, pgid, cpu in table.values() if pgid == self.pgid)

    def stop(self) -> int | None:
        """Warm shutdown (SIGTERM), SIGKILL of the group after 20 s; reap; check nothing is left."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `timeout` forwards it to the worker
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(10)
        deadline = time.monotonic() + 5
        while group_pids(self.pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)  # pool children that outlived their parent
            time.sleep(0.05)
        if group_pids(self.pgid):
            raise RuntimeError(f"worker processes left over: {group_pids(self.pgid)}")
        return self.proc.returncode


def pg_admin():
    import psycopg

    from bench import settings

    db = settings.DATABASES["default"]
    info = {"dbname": "postgres", "user": db["USER"], "host": db["HOST"], "port": str(db["PORT"])}
    if db.get("PASSWORD"):
        info["password"] = db["PASSWORD"]
    return psycopg.connect(**info, autocommit=True)


def recreate_database(name: str) -> None:
    """Drop (terminating its sessions) and create a dedicated bench database."""
    assert name in (RUN_DB, WAKER_DB), name
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def database_exists(name: str) -> bool:
    with pg_admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def fully_migrated() -> bool:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    return not executor.migration_plan(executor.loader.graph.leaf_nodes())


def setup_django(database: str, recreate: bool = True) -> None:
    """Fresh database, ``migrate`` (the command ``manage.py migrate`` runs), Redis db flushed."""
    import django
    import redis
    from django.conf import settings
    from django.core.management import call_command

    assert os.environ["BENCH_PG_NAME"] == database, (os.environ["BENCH_PG_NAME"], database)
    if recreate:
        recreate_database(database)
    django.setup()
    assert settings.DATABASES["default"]["NAME"] == database
    call_command("migrate", verbosity=0, interactive=False)
    assert app.conf.broker_url.endswith(f"/{BROKER_DB}"), app.conf.broker_url
    redis.Redis.from_url(app.conf.broker_url).flushdb()
    app.set_default()


class Load:
    """CPU used by other processes (not ours, not PostgreSQL/Redis) and machine busy share."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.table = process_table()
        self.jiffies = machine_jiffies()
        self.t = time.monotonic()

    def done(self) -> dict:
        after = process_table()
        busy, total = machine_jiffies()
        own_pgids = {w.pgid for w in self.workers} | {os.getpgid(0)}
        foreign = 0.0  # processes that started and ended in between are missed
        for pid, (comm, pgid, cpu) in after.items():
            if pgid not in own_pgids and comm not in SERVICES:
                previous = self.table.get(pid)
                foreign += cpu - (previous[2] if previous else 0.0)
        return {
            "foreign_cpu_s": round(foreign, 2),
            "machine_busy": round((busy - self.jiffies[0]) / max(1, total - self.jiffies[1]), 3),
            "seconds": round(time.monotonic() - self.t, 1),
        }


def start_workers(count: int, phase: str, limit: float) -> list[Worker]:
    workers = [
        Worker(f"susp-{phase}-{i}-{uuid.uuid4().hex[:6]}@localhost", limit, VAR / f"susp-{phase}-{i}.log")
        for i in range(count)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: list[Worker]) -> list[int | None]:
    codes = []
    for worker in workers:
        try:
            codes.append(worker.stop())
        except Exception as exc:  # report, and still stop the others
            log(f"worker {worker.hostname}: {exc}")
            codes.append(None)
    return codes


def task_totals(workers: list[Worker]) -> dict[str, int]:
    """Tasks each worker received, by name, summed (``inspect().stats()['total']``)."""
    totals: dict[str, int] = {}
    replies = app.control.inspect(destination=[w.hostname for w in workers], timeout=5).stats() or {}
    for reply in replies.values():
        for name, count in (reply.get("total") or {}).items():
            totals[name] = totals.get(name, 0) + count
    return totals


def wait_until(condition, timeout: float, what: str, interval: float):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def code_version() -> str:
    """HEAD, plus a digest of uncommitted changes under celery_durable/ (others edit it meanwhile)."""
    try:
        git = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 10}
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_durable"], **git).stdout
        if not dirty:
            return head
        diff = subprocess.run(["git", "diff", "HEAD", "--", "celery_durable"], **git).stdout
        changed = " ".join(line.split()[-1] for line in dirty.splitlines())
        return f"{head} + uncommitted changes in {changed} (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:10]})"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"? ({exc})"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import redis

    result = {"python": platform.python_version()}
    for package in ("celery", "kombu", "billiard", "Django", "psycopg", "redis"):
        result[package] = version(package)
    try:
        with pg_admin() as conn:
            result["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            for name in ("shared_buffers", "synchronous_commit", "random_page_cost", "work_mem"):
                result[f"pg {name}"] = conn.execute(f"SHOW {name}").fetchone()[0]
    except Exception as exc:
        result["postgresql"] = f"? ({exc})"
    try:
        result["redis-server"] = redis.Redis(host="127.0.0.1").info("server")["redis_version"]
    except Exception as exc:
        result["redis-server"] = f"? ({exc})"
    result["cpus"] = str(os.cpu_count())
    result["kernel"] = platform.release()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                result["cpu"] = line.split(":", 1)[1].strip()
                break
    result["celery-durable commit"] = code_version()
    from celery_durable.conf import DEFAULTS

    result["CELERY_DURABLE"] = json.dumps(
        {k: DEFAULTS[k] for k in ("WAKER_INTERVAL", "WAKER_BATCH_SIZE")}
        | json.loads(os.environ.get("BENCH_SUSPENSION_DURABLE") or "{}")
    )
    return result


# --- phase: waker lateness ------------------------------------------------------------


def phase_lateness(opts: argparse.Namespace) -> dict:
    setup_django(RUN_DB)
    from celery_durable.models import Run

    limit = opts.margin + opts.runs / 10 + 600
    workers = start_workers(opts.workers, "lateness", limit)
    try:
        load = Load(workers)
        for _ in range(20):  # warm: pool children connect to PostgreSQL
            warm.delay()
        wait_until(
            lambda: Run.objects.filter(task_name="bench.susp.warm", status="completed").count() == 20,
            60,
            "warm-up runs",
            0.1,
        )
        # A small batch first: the waker's own lateness when execution throughput does not matter.
        small = due_together(workers, opts.small_runs, 20, f"{SLEEPER}:small")
        main = due_together(workers, opts.runs, opts.margin, f"{SLEEPER}:main")
        machine = load.done()
    finally:
        codes = stop_workers(workers)
    return {**main, "small": small, "workers": opts.workers, "worker_exit_codes": codes, "load": machine}


def due_together(workers: list[Worker], n: int, margin: float, tag: str) -> dict:
    """N sleeper runs due in the same second; wait until all completed; per-run lateness."""
    from django.db.models import Count

    from celery_durable import clock
    from celery_durable.conf import get_settings
    from celery_durable.models import Run, Step

    settings = get_settings()
    wake_at = (clock.now() + timedelta(seconds=margin)).replace(microsecond=0)
    wake_iso = wake_at.isoformat()
    before = task_totals(workers).get(SLEEPER, 0)
    log(f"lateness: creating {n} sleeping runs, all due at {wake_iso}")
    t0 = time.monotonic()
    ids = [sleeper.apply_async((wake_iso, tag)).id for _ in range(n)]
    enqueue_s = time.monotonic() - t0
    log(f"lateness: {n} runs recorded and published in {enqueue_s:.1f}s")
    runs = Run.objects.filter(task_name=SLEEPER, args__contains=tag)

    def all_asleep():
        asleep = runs.filter(status="sleeping").count()
        if asleep == n:
            return True
        if clock.now() > wake_at - timedelta(seconds=settings.WAKER_INTERVAL + 1):
            raise RuntimeError(
                f"only {asleep}/{n} runs were asleep {settings.WAKER_INTERVAL + 1:.0f}s before wake_at: "
                f"the workers suspend them too slowly for --margin {margin}; raise it"
            )
        return False

    wait_until(all_asleep, margin + 60, "all runs asleep", 0.2)
    asleep_s = time.monotonic() - t0
    delivered_setup = task_totals(workers).get(SLEEPER, 0) - before
    lead = (wake_at - clock.now()).total_seconds()
    log(f"lateness: all {n} asleep after {asleep_s:.1f}s ({n / asleep_s:.0f} runs/s); due in {lead:.1f}s")
    cpu_before = sum(w.cpu() for w in workers)
    wait_until(lambda: runs.filter(status="completed").count() == n, lead + max(120, n / 10), "all completed", 0.5)
    worker_cpu = sum(w.cpu() for w in workers) - cpu_before
    delivered = task_totals(workers).get(SLEEPER, 0) - before
    statuses = dict(runs.values_list("status").annotate(Count("id")))
    rows = list(
        Step.objects.filter(run_id__in=ids, step_id="s").values_list(
            "finished_at", "status", "run__finished_at", "run__executions"
        )
    )
    assert len(rows) == n, (len(rows), n)
    resumed = [(r[0] - wake_at).total_seconds() * 1000 for r in rows]
    completed = [(r[2] - wake_at).total_seconds() * 1000 for r in rows]
    executions = [r[3] for r in rows]
    per_second: dict[int, int] = {}
    for ms in resumed:
        per_second[math.floor(ms / 1000)] = per_second.get(math.floor(ms / 1000), 0) + 1
    return {
        "runs": n,
        "wake_at": wake_iso,
        "enqueue_s": round(enqueue_s, 2),
        "asleep_s": round(asleep_s, 2),
        "suspend_rate": round(n / asleep_s, 1),
        "lead_s": round(lead, 2),
        "lateness_ms": summary(resumed),
        "completion_ms": summary(completed),
        "early": sum(1 for ms in resumed if ms < 0),
        "drain_s": round(max(completed) / 1000, 3),
        "resume_span_s": round((max(resumed) - min(resumed)) / 1000, 3),
        "drain_rate": round(n / (max(completed) / 1000), 1) if max(completed) > 0 else None,
        "per_second": dict(sorted(per_second.items())),
        "executions": dict(sorted((e, executions.count(e)) for e in set(executions))),
        # Messages the workers received for the sleeper task: 2 per run without duplicates
        # (the first execution and the resume); more = republished (sweeper) or redelivered.
        "sleeper_messages": delivered,
        "sleeper_messages_setup": delivered_setup,
        "statuses": statuses,
        "step_status": sorted({r[1] for r in rows}),
        "worker_cpu_ms_per_run": round(worker_cpu * 1000 / n, 2),
        "waker_interval": settings.WAKER_INTERVAL,
        "waker_batch": settings.WAKER_BATCH_SIZE,
    }


# --- phase: waker query cost with 1,000,000 sleeping runs --------------------------------

# Columns set for a generated sleeping run / its pending sleep step (SQL over the generator's
# columns g, wake_at, created_at); every other column gets its model default (or NULL), so
# the INSERT follows the model as it changes.
RUN_COLUMNS = {
    "id": "md5('susp' || g)::uuid::text",
    "task_name": f"'{SLEEPER}'",
    "status": "'sleeping'",
    "args": "'[\"x\"]'",
    "generation": "1",
    "executions": "1",
    "wake_at": "wake_at",
    "published_at": "created_at",
    "created_at": "created_at",
    "started_at": "created_at",
}
RUN_SOURCE = """
FROM (SELECT g, now() - random() * interval '1 day' AS created_at,
             now() + interval '1 hour' + random() * interval '30 days' AS wake_at
      FROM generate_series(1, %s) AS g) AS t
"""
STEP_COLUMNS = {
    "run_id": "id",
    "step_id": "'s'",
    "kind": "'sleep'",
    "status": "'pending'",
    "output": '\'{"wake_at": {"__type__": "datetime", "__value__": "\' '
    "|| to_char(wake_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00\"}}'",
    "attempts": "1",
    "started_at": "created_at",
    "finished_at": "created_at",
}
STEP_SOURCE = "FROM celery_durable_run WHERE status = 'sleeping'"


def bulk_insert(model, columns: dict[str, str], source: str, source_params: list) -> tuple[str, list]:
    """``INSERT INTO <table> (every column) SELECT ... <source>``: given columns, else defaults."""
    from django.db import connection
    from django.db.models import AutoField, BigAutoField

    names, values, params = [], [], []
    for field in model._meta.concrete_fields:
        if isinstance(field, AutoField | BigAutoField):
            continue
        names.append(connection.ops.quote_name(field.column))
        if field.column in columns:
            values.append(columns[field.column])
        elif field.has_default():
            values.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
        elif field.null:
            values.append("NULL")
        else:
            raise RuntimeError(f"{model.__name__}.{field.name}: no value, no default, not null")
    unknown = set(columns) - {f.column for f in model._meta.concrete_fields}
    assert not unknown, unknown
    table = connection.ops.quote_name(model._meta.db_table)
    sql = f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} {source}"
    return sql, params + source_params


class Tracer:
    """A Django execute wrapper: each statement's time and the function ``tick()`` called it from."""

    def __init__(self, with_sql: bool = False) -> None:
        self.records: list[tuple[str, float, str]] = []
        self.with_sql = with_sql

    def __call__(self, execute, sql, params, many, context):
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = (time.perf_counter() - t) * 1000
            text = ""
            if self.with_sql:
                from django.db import connection

                text = connection.ops.last_executed_query(context["cursor"].cursor, sql, params)
            self.records.append((_caller_of_tick(), elapsed, text))


def _caller_of_tick() -> str:
    """The function ``integration/services.py::tick`` called that (indirectly) runs this statement."""
    frame = sys._getframe(2)
    callee = None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "tick" and code.co_filename.endswith(os.path.join("integration", "services.py")):
            return callee or "tick"
        callee = code.co_name
        frame = frame.f_back
    return "?"


def reusable_waker_db(rows: int) -> bool:
    """Whether the query database from an earlier run still fits: same schema, same rows, nothing near due.

    Runs in a subprocess (this one must set Django up only once, maybe after re-creating the database).
    """
    check = (
        "import django, sys; django.setup(); from bench.suspension import fully_migrated; "
        "from django.db import connection; c = connection.cursor(); "
        "c.execute(\"SELECT count(*), count(*) FILTER (WHERE status = 'sleeping' AND wake_at > now() + "
        "interval '10 minutes'), (SELECT count(*) FROM celery_durable_step WHERE status = 'pending') "
        'FROM celery_durable_run"); '
        "print(fully_migrated(), *c.fetchone())"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).stdout.split()  # fmt: skip
    except subprocess.SubprocessError:
        return False
    return out == ["True", str(rows), str(rows), str(rows)]


def phase_query(opts: argparse.Namespace) -> dict:
    reuse = not opts.regenerate and database_exists(WAKER_DB) and reusable_waker_db(opts.rows)
    setup_django(WAKER_DB, recreate=not reuse)
    from django.db import connection, connections, transaction
    from django.test.utils import CaptureQueriesContext

    from celery_durable import serialization
    from celery_durable.integration.services import tick
    from celery_durable.models import Run, Step

    t0 = time.monotonic()
    if reuse:
        log(f"query: reusing the {opts.rows} sleeping runs of database {WAKER_DB} (--regenerate to rebuild)")
    else:
        with connection.cursor() as cursor:
            cursor.execute(*bulk_insert(Run, RUN_COLUMNS, RUN_SOURCE, [opts.rows]))
            cursor.execute(*bulk_insert(Step, STEP_COLUMNS, STEP_SOURCE, []))
    generate_s = time.monotonic() - t0
    t0 = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE celery_durable_run")
        cursor.execute("VACUUM ANALYZE celery_durable_step")
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'sleeping'), min(wake_at) - now(), "
            "pg_size_pretty(pg_total_relation_size('celery_durable_run')), "
            "pg_size_pretty(pg_relation_size('durable_run_due')) FROM celery_durable_run"
        )
        total, sleeping, nearest, table_size, due_index_size = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM celery_durable_step WHERE status = 'pending'")
        pending_steps = cursor.fetchone()[0]
    analyze_s = time.monotonic() - t0
    sample = Step.objects.filter(step_id="s").values_list("output", flat=True).first()
    assert isinstance(serialization.loads(sample)["wake_at"], datetime), sample
    log(f"query: {total} runs ({sleeping} sleeping) generated in {generate_s:.1f}s, analyzed in {analyze_s:.1f}s")

    for _ in range(20):  # warm caches and the connection
        report = tick(app)
    assert not any(vars(report).values()), f"something was due: {report}"

    # The SQL of each statement as tick() sends it (CaptureQueriesContext), who sent it, its plan.
    tracer = Tracer(with_sql=True)
    with CaptureQueriesContext(connection) as whole, connection.execute_wrapper(tracer):
        tick(app)
    callers = [(caller, sql) for caller, _ms, sql in tracer.records]
    plans = []
    for query in whole.captured_queries:
        sql = query["sql"]
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT", "DELETE", "WITH")):
            continue  # BEGIN / COMMIT markers of transaction.atomic
        caller = next((c for c, text in callers if text == sql), "?")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
            lines = [row[0] for row in cursor.fetchall()]
            transaction.set_rollback(True)
        text = "\n".join(lines)
        plans.append(
            {
                "function": caller,
                "sql": sql,
                "plan": lines,
                "seq_scan": "Seq Scan" in text,
                "indexes": sorted({w for w in text.replace("(", " ").split() if w.startswith("durable_")}),
                "execution_ms": _plan_ms(lines, "Execution Time"),
                "planning_ms": _plan_ms(lines, "Planning Time"),
            }
        )

    def timed(fn, count: int, close: bool) -> list[float]:
        out = []
        for _ in range(count):
            t = time.perf_counter()
            fn()
            if close:
                connections.close_all()
            out.append((time.perf_counter() - t) * 1000)
        return out

    def raw(statements: list[str]):
        def run() -> None:
            with connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql)
                    cursor.fetchall()

        return run

    selects = [p["sql"] for p in plans if p["sql"].lstrip().upper().startswith("SELECT")]
    # Floors: one round trip through Django's cursor, and the tick's SELECTs sent as raw SQL
    # (autocommit, no ORM, no transaction): what the database and the driver cost.
    floor_select1 = summary(timed(raw(["SELECT 1"]), opts.ticks, close=False))
    floor_raw = summary(timed(raw(selects), opts.ticks, close=False))
    # A proposal's floor: every "is there anything to do?" question of an idle tick in one
    # statement (one round trip), the transactional take_* only when its EXISTS is true.
    probe_sql = "SELECT " + ", ".join(f"EXISTS ({sql.replace(' FOR UPDATE SKIP LOCKED', '')})" for sql in selects)
    probe = summary(timed(raw([probe_sql]), opts.ticks, close=False))
    ticks = timed(lambda: tick(app), opts.ticks, close=False)
    # Where a tick's time goes: statement time by the function tick() called (traced ticks).
    tracer = Tracer()
    with connection.execute_wrapper(tracer):
        traced = timed(lambda: tick(app), opts.ticks, close=False)
    by_caller: dict[str, float] = {}
    for caller, elapsed, _sql in tracer.records:
        by_caller[caller] = by_caller.get(caller, 0.0) + elapsed
    sql_ms = {caller: round(total_ms / opts.ticks, 3) for caller, total_ms in by_caller.items()}
    statements = {caller: sum(1 for c, _e, _s in tracer.records if c == caller) / opts.ticks for caller in by_caller}
    # The worker's ServiceThread closes every connection after each tick: a new session each tick.
    ticks_reconnect = timed(lambda: tick(app), max(50, opts.ticks // 10), close=True)
    return {
        "rows": total,
        "sleeping": sleeping,
        "pending_steps": pending_steps,
        "nearest_wake_in": str(nearest),
        "table_size": table_size,
        "due_index_size": due_index_size,
        "generate_s": round(generate_s, 1),
        "reused": reuse,
        "vacuum_analyze_s": round(analyze_s, 1),
        "statements_per_tick": len(plans),
        "captured_per_tick": [q["sql"][:40] for q in whole.captured_queries],
        "tick_ms": summary(ticks),
        "tick_traced_ms": summary(traced),
        "tick_reconnect_ms": summary(ticks_reconnect),
        "sql_ms_per_tick_by_caller": sql_ms,
        "statements_per_tick_by_caller": statements,
        "floor_select1_ms": floor_select1,
        "floor_raw_selects_ms": floor_raw,
        "probe_ms": probe,
        "probe_sql": probe_sql,
        "plans": plans,
    }


def _plan_ms(lines: list[str], label: str) -> float | None:
    for line in lines:
        if line.strip().startswith(label):
            return float(line.split(":")[1].split()[0])
    return None


# --- phase: event fan-in ----------------------------------------------------------------


def phase_events(opts: argparse.Namespace) -> dict:
    setup_django(RUN_DB)
    import redis

    import celery_durable as cd
    from celery_durable.models import Run, Step

    broker = redis.Redis.from_url(app.conf.broker_url)
    workers = start_workers(1, "events", 1800)

    def status(run_id: str) -> str | None:
        return Run.objects.filter(id=run_id).values_list("status", flat=True).first()

    def step_time(run_id: str) -> float:
        from celery_durable import serialization

        output = Step.objects.filter(run_id=run_id, step_id="t").values_list("output", flat=True).get()
        return float(serialization.loads(output))

    def settle() -> None:
        time.sleep(opts.gap)  # the worker is idle again (warm), and the polling stops

    def plain_hop() -> float:
        token = uuid.uuid4().hex
        t0 = time.time()
        stamp.delay(token)
        _key, raw = broker.blpop([STAMPS], timeout=30)
        got, t = json.loads(raw)
        assert got == token
        return (t - t0) * 1000

    def durable_start() -> float:
        t0 = time.time()
        run = starter.delay()
        wait_until(lambda: status(run.id) == "completed", 30, "starter run", 0.005)
        return (step_time(run.id) - t0) * 1000

    def fan_in(run_id: str, key: str) -> tuple[float, float]:
        t0 = time.time()
        cd.send_event(EVENT, {"key": key})
        sent = time.time()
        wait_until(lambda: status(run_id) == "completed", 30, f"run {run_id} resumed", 0.005)
        return (step_time(run_id) - t0) * 1000, (sent - t0) * 1000

    def waiting(key: str) -> str:
        run = waiter.delay(key)
        wait_until(lambda: status(run.id) == "waiting", 30, f"run {run.id} waiting", 0.002)
        return run.id

    try:
        load = Load(workers)
        for i in range(opts.warmup):
            plain_hop()
            durable_start()
            fan_in(waiting(f"warm-{i}"), f"warm-{i}")
        plain, start, single, single_send = [], [], [], []
        log(f"events: {opts.events} rounds (plain hop, durable start, event to a lone waiting run)")
        for i in range(opts.events):
            settle()
            plain.append(plain_hop())
            settle()
            start.append(durable_start())
            run_id = waiting(f"k{i}")
            settle()
            latency, send_ms = fan_in(run_id, f"k{i}")
            single.append(latency)
            single_send.append(send_ms)
        log(f"events: {opts.crowd} runs waiting on the same event name; {opts.crowd_events} events sent one by one")
        crowd_ids = {f"c{i}": waiter.delay(f"c{i}").id for i in range(opts.crowd)}
        wait_until(
            lambda: Run.objects.filter(task_name="bench.susp.waiter", status="waiting").count() == opts.crowd,
            120 + opts.crowd / 10,
            "the crowd waiting",
            0.2,
        )
        crowd, crowd_send, crowd_waiting = [], [], []
        for i in range(opts.crowd_events):
            key = f"c{i}"
            settle()
            crowd_waiting.append(opts.crowd - i)
            latency, send_ms = fan_in(crowd_ids[key], key)
            crowd.append(latency)
            crowd_send.append(send_ms)
        machine = load.done()
    finally:
        codes = stop_workers(workers)
    return {
        "events": opts.events,
        "warmup": opts.warmup,
        "gap_s": opts.gap,
        "plain_hop_ms": summary(plain),
        "durable_start_ms": summary(start),
        "fan_in_ms": summary(single),
        "send_event_ms": summary(single_send),
        "crowd": opts.crowd,
        "crowd_events": opts.crowd_events,
        "crowd_fan_in_ms": summary(crowd),
        "crowd_send_event_ms": summary(crowd_send),
        "crowd_send_first10_ms": summary(crowd_send[:10]),
        "crowd_send_last10_ms": summary(crowd_send[-10:]),
        "worker_exit_codes": codes,
        "load": machine,
    }


PHASES = {"lateness": phase_lateness, "query": phase_query, "events": phase_events}


# --- driver -----------------------------------------------------------------------------

OTHER_BENCH = (
    "bench/run.py",
    "bench.drive",
    "bench.celery_app",
    "bench.statements",
    "bench/statements.py",
    "bench/admin_scale.py",
    "bench.admin_scale",
)


def other_benchmarks() -> list[str]:
    """Command lines of the other benchmarks in bench/ (issue 2's, the admin's) running now."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmd for marker in OTHER_BENCH):
            found.append(f"{entry}: {cmd.strip()[:160]}")
    return found


def leftovers() -> list[int]:
    """Worker processes still alive in any process group this benchmark started (killed if found)."""
    alive = []
    pgids = [int(line) for line in PGIDS.read_text().split()] if PGIDS.exists() else []
    for pgid in pgids:
        pids = group_pids(pgid)
        if pids:
            alive.extend(pids)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    return alive


def busy_share(seconds: float = 3.0) -> float:
    """Share of both CPUs busy over ``seconds`` (before a phase: is the machine quiet?)."""
    busy0, total0 = machine_jiffies()
    time.sleep(seconds)
    busy1, total1 = machine_jiffies()
    return round((busy1 - busy0) / max(1, total1 - total0), 3)


def wait_for_other_benchmarks(limit: float) -> float:
    """Wait (up to ``limit`` s) while issue 2's benchmark runs; return the seconds waited."""
    t0 = time.monotonic()
    others = other_benchmarks()
    if others:
        log("another benchmark is running; waiting for it to end:\n  " + "\n  ".join(others[:3]))
    while others:
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"another benchmark still running after {limit:.0f}s")
        time.sleep(10)
        others = other_benchmarks()
    return time.monotonic() - t0


def run_phase(name: str, argv: list[str], env: dict[str, str], limit: int) -> tuple[dict, bool]:
    """Run one phase in a subprocess under ``timeout``; (its result, whether another benchmark overlapped)."""
    cmd = ["timeout", "-k", "15", str(limit), sys.executable, str(Path(__file__).resolve()), "--phase", name, *argv]
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    code = code_version()
    busy_before = busy_share()
    log(f"phase {name}: {' '.join(cmd[4:])}  (timeout {limit}s; machine {busy_before:.0%} busy before)")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    overlap = False
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + limit + 30
    while proc.poll() is None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        if not overlap and other_benchmarks():
            overlap = True
            log(f"phase {name}: another benchmark started meanwhile; this phase will be measured again")
        time.sleep(2)
    proc.wait()
    reader.join(10)
    if proc.returncode != 0:
        raise RuntimeError(f"phase {name} exited with {proc.returncode} (124: timeout)")
    result = json.loads("".join(chunks).strip().splitlines()[-1])
    return {**result, "busy_before": busy_before, "code": code}, overlap


def ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def row(label: str, s: dict) -> str:
    return f"| {label} | {s['n']} | {ms(s['p50'])} | {ms(s['p90'])} | {ms(s['p99'])} | {ms(s['max'])} |"


def report(results: dict, command: str) -> str:
    out = [f"Command: `{command}`", ""]
    out += ["| component | version |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in results["versions"].items()]
    lateness = results.get("lateness")
    if lateness:
        lat, comp = lateness["lateness_ms"], lateness["completion_ms"]
        bound = math.ceil(lateness["runs"] / (lateness["waker_batch"] * lateness["workers"]))
        out += [
            "",
            f"### Waker lateness: {lateness['runs']:,} runs due in the same second "
            f"({lateness['workers']} worker(s), prefork -c 2, Redis, PostgreSQL)",
            "",
            "| measure (ms after wake_at) | n | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|",
            row("sleep step passed (resumed)", lat),
            row("run completed", comp),
            row(
                f"sleep step passed, a batch of {lateness['small']['runs']} runs due together",
                lateness["small"]["lateness_ms"],
            ),
            "",
            f"* drain: the last run completed {lateness['drain_s']:.1f} s after wake_at "
            f"({lateness['drain_rate']:,.0f} runs/s); resumes spread over {lateness['resume_span_s']:.1f} s; "
            f"{lateness['early']} resumed before wake_at.",
            f"* waker: WAKER_BATCH_SIZE {lateness['waker_batch']} runs a tick, a tick every "
            f"{lateness['waker_interval']:g} s per worker: {lateness['runs']:,} runs need >= {bound} ticks "
            f"(~{bound * lateness['waker_interval']:.0f} s) whatever the execution speed.",
            f"* resumed per second after wake_at: {lateness['per_second']}",
            f"* set-up (real API): {lateness['runs']:,} runs recorded+published in {lateness['enqueue_s']:.1f} s, "
            f"all asleep after {lateness['asleep_s']:.1f} s ({lateness['suspend_rate']:,.0f} runs/s); "
            f"executions per run {lateness['executions']}; statuses {lateness['statuses']}; "
            f"sleeper messages received by the worker(s) {lateness['sleeper_messages']} "
            f"(2 per run = no duplicates: {2 * lateness['runs']}; {lateness['sleeper_messages_setup']} of them "
            f"before wake_at, for {lateness['runs']} first executions); "
            f"worker CPU {lateness['worker_cpu_ms_per_run']} ms/run during the drain; "
            f"worker exit codes {lateness['worker_exit_codes']}; load {lateness['load']}; "
            f"machine {lateness['busy_before']:.0%} busy before the phase",
        ]
    query = results.get("query")
    if query:
        tick, rec = query["tick_ms"], query["tick_reconnect_ms"]
        out += [
            "",
            f"### Waker query cost: {query['sleeping']:,} sleeping runs, nothing due "
            f"(table {query['table_size']}, index durable_run_due {query['due_index_size']})",
            "",
            "| per tick (ms) | n | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|",
            row("tick(), connection kept", tick),
            row("tick() + connections.close_all() (as ServiceThread)", rec),
        ]
        out += [
            row("tick() with a statement tracer (for the split below)", query["tick_traced_ms"]),
            row(
                "floor: the tick's SELECTs as raw SQL (no ORM, autocommit)",
                query["floor_raw_selects_ms"],
            ),
            row("floor: SELECT 1 through Django's cursor", query["floor_select1_ms"]),
            row("proposal: the same questions as one SELECT EXISTS(..), .. (1 round trip)", query["probe_ms"]),
            "",
            f"{query['statements_per_tick']} SQL statements per tick, {len(query['captured_per_tick'])} entries "
            f"with the transaction markers CaptureQueriesContext logs (BEGIN/COMMIT of the atomic blocks); "
            f"{query['rows']:,} runs, {query['pending_steps']:,} pending steps; nearest wake in "
            f"{query['nearest_wake_in']}; generated in {query['generate_s']} s, VACUUM ANALYZE "
            f"{query['vacuum_analyze_s']} s; machine {query['busy_before']:.0%} busy before the phase.",
            "",
            "| tick() called | statements / tick | mean statement time ms / tick (client-side) |",
            "|---|---|---|",
            *[
                f"| {caller} | {query['statements_per_tick_by_caller'][caller]:g} | {ms_:.3f} |"
                for caller, ms_ in query["sql_ms_per_tick_by_caller"].items()
            ],
            "",
            "Plans (EXPLAIN (ANALYZE, BUFFERS) of each statement, as captured):",
            "",
        ]
        for plan in query["plans"]:
            out += [
                f"* {plan['function']}: {'SEQ SCAN' if plan['seq_scan'] else 'no seq scan'} "
                f"{plan['indexes']}, execution {plan['execution_ms']} ms, planning {plan['planning_ms']} ms",
                "",
                "  ```",
                *[f"  {line}" for line in plan["plan"]],
                "  ```",
            ]
    events = results.get("events")
    if events:
        out += [
            "",
            "### Event fan-in, warm worker (prefork -c 2, Redis, PostgreSQL)",
            "",
            "| measure (ms) | n | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|",
            row("send_event -> resumed run's next step (1 run waiting)", events["fan_in_ms"]),
            row("  of which send_event() call", events["send_event_ms"]),
            row(f"send_event -> resumed step, {events['crowd']} runs waiting on the name", events["crowd_fan_in_ms"]),
            row("  of which send_event() call", events["crowd_send_event_ms"]),
            row("  send_event() call, first 10 (most waiting)", events["crowd_send_first10_ms"]),
            row("  send_event() call, last 10", events["crowd_send_last10_ms"]),
            row("baseline: plain Celery task, apply_async -> body", events["plain_hop_ms"]),
            row("baseline: durable run, apply_async -> first step", events["durable_start_ms"]),
            "",
            f"* worker exit codes {events['worker_exit_codes']}; load {events['load']}; "
            f"machine {events['busy_before']:.0%} busy before the phase",
        ]
    out += ["", "### Targets", ""] + [f"* {line}" for line in targets(results)]
    return "\n".join(out)


def targets(results: dict) -> list[str]:
    lines = []
    if "query" in results:
        p50, p99 = results["query"]["tick_ms"]["p50"], results["query"]["tick_ms"]["p99"]
        seq = [p["function"] for p in results["query"]["plans"] if p["seq_scan"]]
        lines.append(
            f"waker tick with {results['query']['sleeping']:,} sleeping runs: p50 {ms(p50)} ms, p99 {ms(p99)} ms "
            f"(target < 5 ms: {'met' if p99 < 5 else 'p50 met, p99 not' if p50 < 5 else 'NOT met'}; "
            f"{p50 / 5:.2f}x the budget at p50); "
            f"with a new connection each tick p50 {ms(results['query']['tick_reconnect_ms']['p50'])} ms; "
            f"seq scans: {seq or 'none'}"
        )
    if "events" in results:
        e = results["events"]
        p50 = e["fan_in_ms"]["p50"]
        lines.append(
            f"event fan-in p50 {ms(p50)} ms, p99 {ms(e['fan_in_ms']['p99'])} ms (target p50 < 50 ms: "
            f"{'met' if p50 < 50 else 'NOT met'}; {p50 / 50:.2f}x the budget); "
            f"{p50 / e['plain_hop_ms']['p50']:.1f}x a plain Celery hop, "
            f"{p50 / e['durable_start_ms']['p50']:.1f}x a durable run's start; "
            f"with {e['crowd']} runs waiting on the name p50 {ms(e['crowd_fan_in_ms']['p50'])} ms"
        )
    if "lateness" in results:
        lat = results["lateness"]["lateness_ms"]
        lines.append(
            f"waker lateness ({results['lateness']['runs']:,} due at once): p50 {ms(lat['p50'])} ms, "
            f"p99 {ms(lat['p99'])} ms, drain {results['lateness']['drain_s']:.1f} s; a batch of "
            f"{results['lateness']['small']['runs']}: p50 {ms(results['lateness']['small']['lateness_ms']['p50'])} ms "
            f"(no numeric target in issue 3; the issue's e2e test asks for 'the documented lateness')"
        )
    return lines


SIZES = {
    # runs due at once, margin s (0: runs / 25 + 30), sleeping rows, ticks, events, crowd, crowd events, warm-up
    "quick": {
        "runs": 2000,
        "margin": 0,
        "rows": 1_000_000,
        "ticks": 500,
        "events": 60,
        "crowd": 200,
        "crowd_events": 40,
        "warmup": 5,
        "small_runs": 20,
    },
    "full": {
        "runs": 10_000,
        "margin": 0,
        "rows": 1_000_000,
        "ticks": 2000,
        "events": 200,
        "crowd": 1000,
        "crowd_events": 100,
        "warmup": 10,
        "small_runs": 20,
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~4 min, 2,000 runs due at once)")
    parser.add_argument("--only", action="append", choices=list(PHASES), help="run only this phase (repeatable)")
    parser.add_argument("--force", action="store_true", help="measure even while issue 2's benchmark runs")
    parser.add_argument("--wait", type=float, default=3600, help="wait this long at most for another benchmark (s)")
    parser.add_argument("--workers", type=int, default=1, help="workers in the lateness phase (each has a waker)")
    parser.add_argument(
        "--durable", default="", help="CELERY_DURABLE overrides as JSON, e.g. '{\"WAKER_BATCH_SIZE\": 5000}'"
    )
    for key, value in SIZES["full"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    parser.add_argument("--gap", type=float, default=0.05, help="idle pause before each timed event (s)")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the query phase's rows even if reusable")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    sizes = SIZES["quick" if opts.quick else "full"]
    for key, value in sizes.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if not opts.margin:
        # Time to record and suspend all runs before they are due (the real path runs ~50-100/s here).
        opts.margin = int(opts.runs / 25 + 30)

    if opts.phase:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: finally blocks stop workers
        result = PHASES[opts.phase](opts)
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return 0

    VAR.mkdir(parents=True, exist_ok=True)
    PGIDS.write_text("")  # only this run's process groups (an old pgid may belong to someone else now)
    if opts.durable:
        json.loads(opts.durable)
        os.environ["BENCH_SUSPENSION_DURABLE"] = opts.durable
    command = " ".join([".venv/bin/python bench/suspension.py", *sys.argv[1:]])
    results: dict = {"command": command, "started": datetime.now(UTC).isoformat(), "versions": versions()}
    argv = [
        "--quick" if opts.quick else "",
        *(f"--{k.replace('_', '-')}={getattr(opts, k)}" for k in sizes),
        f"--workers={opts.workers}",
        f"--gap={opts.gap}",
        "--regenerate" if opts.regenerate else "",
    ]
    argv = [a for a in argv if a]
    limits = {"lateness": int(opts.margin + opts.runs / 10 + 900), "query": 1800, "events": 2400}
    databases = {"lateness": RUN_DB, "query": WAKER_DB, "events": RUN_DB}
    failures = []
    for name in opts.only or ["query", "events", "lateness"]:
        for attempt in range(3):
            waited = 0.0 if opts.force else wait_for_other_benchmarks(opts.wait)
            if waited:
                log(f"waited {waited:.0f}s for the other benchmark")
            try:
                env = {
                    "BENCH_PG_NAME": databases[name],
                    "BENCH_BROKER_DB": BROKER_DB,
                    "BENCH_RESULTS": "none",
                    # The plain baseline task must not make Celery's Django fixup close the
                    # connection a durable task uses next (durable tasks keep theirs anyway).
                    "BENCH_DB_REUSE": "1",
                }
                result, overlap = run_phase(name, argv, env, limits[name])
            except Exception as exc:
                log(f"phase {name} failed: {exc}")
                failures.append(name)
                break
            finally:
                left = leftovers()
                if left:
                    log(f"worker processes left over after {name} (killed): {left}")
                    results.setdefault("leftovers", {})[name] = left
            results[name] = {**result, "overlapped_other_benchmark": overlap, "attempt": attempt + 1}
            if not overlap or opts.force:
                break
    results["finished"] = datetime.now(UTC).isoformat()
    path = VAR / f"suspension-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(report(results, command))
    log(f"results: {path}")
    return 1 if failures or results.get("leftovers") else 0


if __name__ == "__main__":
    sys.exit(main())
