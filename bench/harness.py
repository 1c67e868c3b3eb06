"""Shared plumbing: worker subprocesses, /proc CPU accounting, PostgreSQL statistics."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"
# Every worker process group started, for the leftover check (BENCH_PGID_FILE: a separate
# list for a benchmark that may run next to bench/run.py, which empties this one at start).
PGID_FILE = VAR / os.environ.get("BENCH_PGID_FILE", "worker-pgids")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Tables whose write counters we report, and how they are named in the output.
TABLES = {
    "celery_durable_run": "run",
    "celery_durable_step": "step",
    "django_celery_results_taskresult": "dcr",
}


# --- processes -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # fields[0] is the state (field 3), fields[2] the process group (field 5).
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (utime + stime)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def service_cpu(comm: str) -> float:
    """CPU seconds so far of every process with this command name (e.g. ``redis-server``)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if raw[raw.index("(") + 1 : raw.rindex(")")] == comm:
            fields = raw[raw.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest columns (already inside user/nice)
    return total - idle, total


class CpuSampler:
    """CPU used during a measurement: by the worker, this driver, our PostgreSQL backends, Redis, and the rest.

    ``other_pct`` is the machine's busy time not explained by those four, in % of all CPUs:
    other users' processes and their PostgreSQL backends, plus our own short-lived sessions
    (Celery's connection per task) and PostgreSQL's background writers.
    """

    def __init__(self, worker: Worker, monitor: Monitor) -> None:
        self.worker, self.monitor = worker, monitor
        self.start = self._sample()

    def _sample(self) -> dict:
        t = os.times()
        busy, total = machine_jiffies()
        return {
            "wall": time.perf_counter(),
            "worker": self.worker.cpu(),
            "driver": t.user + t.system,
            "pg": self.monitor.backend_cpu(),
            "redis": service_cpu("redis-server"),
            "busy": busy,
            "total": total,
        }

    def finish(self, items: int) -> dict[str, float]:
        a, b = self.start, self._sample()
        elapsed = b["wall"] - a["wall"]
        cpus = os.cpu_count() or 1
        # Backends alive now (the worker's and ours); sessions that ended meanwhile are missed.
        pg = sum(cpu - a["pg"].get(pid, 0.0) for pid, cpu in b["pg"].items())
        used = {
            "worker": b["worker"] - a["worker"],
            "driver": b["driver"] - a["driver"],
            "pg": pg,
            "redis": b["redis"] - a["redis"],
        }
        busy_pct = 100.0 * (b["busy"] - a["busy"]) / max(1, b["total"] - a["total"])
        return {
            **{f"{k}_cpu_ms": 1000 * v / items for k, v in used.items()},
            "machine_busy_pct": busy_pct,
            "other_cpu_pct": max(0.0, busy_pct - 100.0 * sum(used.values()) / elapsed / cpus),
        }


class Worker:
    """A real ``celery worker`` subprocess (prefork -c 2) under ``timeout``, in its own process group."""

    def __init__(self, queue: str, hostname: str, limit: float, log_path: Path, concurrency: int = 2) -> None:
        self.queue = queue
        self.hostname = hostname
        self.log_path = log_path
        self.cmd = [
            "timeout",
            "-k",
            "10",
            str(int(limit)),
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-n",
            hostname,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy()
        )
        log.close()
        with PGID_FILE.open("a") as f:
            f.write(f"{self.proc.pid}\n")

    def wait_ready(self, app, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.proc.returncode}; log: {self.log_path}\n{self.log_tail()}"
                )
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                # The pool children are forked before the consumer starts: they are up too.
                return
        raise RuntimeError(f"worker not ready after {timeout}s; log: {self.log_path}\n{self.log_tail()}")

    def cpu(self) -> float:
        return cpu_seconds(group_pids(self.pgid))

    def stop(self) -> int | None:
        """Warm shutdown (SIGTERM via ``timeout``), then SIGKILL the group; reap; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        # Pool children outliving their parent would be reparented: kill any left in the group.
        deadline = time.monotonic() + 5
        while group_pids(self.pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            time.sleep(0.05)
        left = group_pids(self.pgid)
        if left:
            raise RuntimeError(f"worker processes left over: {left}")
        return self.exit_code

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- PostgreSQL ------------------------------------------------------------------------

SNAPSHOT_SQL = """
SELECT
  (SELECT json_build_object('xact_commit', xact_commit, 'xact_rollback', xact_rollback, 'sessions', sessions)
     FROM pg_stat_database WHERE datname = current_database()),
  (SELECT json_object_agg(relname, json_build_array(n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd))
     FROM pg_stat_user_tables WHERE relname = ANY(%s))
"""


def pg_conninfo(dbname: str | None = None) -> dict[str, str]:
    from django.conf import settings

    db = settings.DATABASES["default"]
    info = {"dbname": dbname or db["NAME"], "user": db["USER"], "host": db["HOST"], "port": str(db["PORT"])}
    if db.get("PASSWORD"):
        info["password"] = db["PASSWORD"]
    return info


class Monitor:
    """An autocommit psycopg connection to the bench database that counts its own transactions.

    Each of its statements is one transaction in pg_stat_database.xact_commit; the
    benchmark subtracts ``self.statements`` from the deltas it reports.
    """

    def __init__(self) -> None:
        import psycopg

        self.conn = psycopg.connect(**pg_conninfo(), autocommit=True)
        self.statements = 0

    def execute(self, sql: str, params=None):
        self.statements += 1
        return self.conn.execute(sql, params)

    def snapshot(self) -> dict:
        row = self.execute(SNAPSHOT_SQL, [list(TABLES)]).fetchone()
        database, tables = row
        flat = {k: int(v) for k, v in database.items()}
        for relname, short in TABLES.items():
            ins, upd, dele, _hot = (tables or {}).get(relname, [0, 0, 0, 0])
            flat[f"{short}_ins"] = ins
            flat[f"{short}_upd"] = upd
            flat[f"{short}_del"] = dele
        return flat

    def wait_alone(self, timeout: float = 10.0) -> None:
        """Wait until no other session is connected to the bench database (their stats are flushed)."""
        deadline = time.monotonic() + timeout
        while True:
            others = self.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            if not others:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{others} sessions still connected to the bench database")
            time.sleep(0.05)

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds so far of every other backend connected to the bench database."""
        pids = [
            row[0]
            for row in self.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
        return {pid: cpu_seconds([pid]) for pid in pids}

    def close(self) -> None:
        self.conn.close()


def stats_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def server_version(monitor: Monitor) -> str:
    return monitor.execute("SHOW server_version").fetchone()[0]


def recreate_database() -> None:
    """Drop and create the bench database (no Django needed): every run starts from empty tables."""
    import psycopg

    from bench import settings

    db = settings.DATABASES["default"]
    info = {"dbname": "postgres", "user": db["USER"], "host": db["HOST"], "port": str(db["PORT"])}
    if db.get("PASSWORD"):
        info["password"] = db["PASSWORD"]
    with psycopg.connect(**info, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}"')
        conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


def ensure_database() -> None:
    """Create the bench database if it does not exist, and migrate it."""
    import psycopg
    from django.conf import settings
    from django.core.management import call_command

    name = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(**pg_conninfo("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0, interactive=False)


def fresh_tables(*tables: str) -> None:
    """The bench database migrated (``ensure_database``) and ``tables`` emptied (in-process benches)."""
    from django.db import connection

    ensure_database()
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
