"""Shared bits of bench/peers: resources, statistics, machine and version facts."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness

ROOT = harness.ROOT
VAR = harness.VAR
PGIDS = "peers-worker-pgids"  # under var/bench/: every worker process group started by bench/peers
OURS_DB = "durable_peers_bench"  # celery-durable's tables (workloads 1 and 3)
DBOS_DB = "dbos_peers_bench"  # DBOS's system database (workloads 1 and 3)
BROKER_DB = "12"  # Redis db: broker, lock keys and timestamps (flushed by each phase)
RESULTS_DB = "15"  # Redis db: result backend of workload 1
KEY = "one-key"


def env(**extra: str) -> dict[str, str]:
    """The environment of every bench/peers subprocess (and of the workers they start)."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "BENCH_PG_NAME": OURS_DB,
        "BENCH_BROKER_DB": BROKER_DB,
        "BENCH_RESULTS_DB": RESULTS_DB,
        "BENCH_PGID_FILE": PGIDS,
        **extra,
    }


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
    }


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    return 100.0 * (after[0] - before[0]) / max(1, after[1] - before[1])


def other_benchmarks() -> list[str]:
    """Other bench/ scripts and their workers running now (from /proc), not ours."""
    found = []
    mine = os.getpgrp()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if os.getpgid(int(entry)) == mine:
                continue
        except (OSError, ProcessLookupError):
            continue
        words = cmd.split()
        if words and "python" in words[0] and any(w.startswith(("bench/", "bench.")) for w in words[1:]):
            found.append(f"{entry}: {cmd.strip()[:120]}")
    return found


def busy_now(seconds: float = 3.0) -> float:
    """% of the machine busy over the next ``seconds``."""
    before = harness.machine_jiffies()
    time.sleep(seconds)
    return busy_pct(before, harness.machine_jiffies())


def wait_for_other_benchmarks(limit: float, idle_below: float = 35.0) -> float:
    """Wait (at most ``limit`` s) while another bench/ script runs and the machine is busy.

    Other scripts that wait for quiet themselves (bench/quiet.py) would wait for this one in
    turn: one that leaves the machine below ``idle_below`` % busy does not hold us up.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        others = other_benchmarks()
        if not others:
            break
        busy = busy_now()
        if busy < idle_below:
            log(f"other benchmark processes, but the machine is {busy:.0f} % busy: going ahead ({others[0]})")
            break
        log(f"waiting: machine {busy:.0f} % busy, other benchmark running: {others[0]}")
        time.sleep(10)
    return time.monotonic() - t0


def conninfo(dbname: str) -> dict[str, str]:
    """psycopg connection arguments for ``dbname`` on bench/settings.py's server (no Django needed)."""
    from bench import settings

    db = settings.DATABASES["default"]
    info = {"dbname": dbname, "user": db["USER"], "host": db["HOST"], "port": str(db["PORT"])}
    if db.get("PASSWORD"):
        info["password"] = db["PASSWORD"]
    return info


def admin():
    import psycopg

    return psycopg.connect(**conninfo("postgres"), autocommit=True)


def recreate(name: str) -> None:
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def leftovers() -> list[int]:
    """Worker processes still alive in a process group bench/peers started (killed if found)."""
    path = VAR / PGIDS
    alive: list[int] = []
    for pgid in [int(x) for x in path.read_text().split()] if path.exists() else []:
        pids = harness.group_pids(pgid)
        if pids:
            alive.extend(pids)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    return alive


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
    out["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip()
    out["kernel"] = platform.release()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            out["cpu"] = line.split(":", 1)[1].strip()
            break
    if os.environ.get("BENCH_SNAPSHOT_OF"):
        out["celery-durable commit"] = os.environ["BENCH_SNAPSHOT_OF"] + " (snapshot)"
        return out
    git = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 10}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "celery_durable"], **git).stdout
    out["celery-durable commit"] = head + (" (celery_durable/ modified)" if dirty else "")
    return out


def pg_counters(dbname: str, schema: str | None = None) -> dict[str, Any]:
    """pg_stat_database commits and the row writes (ins/upd/del) of every table in ``dbname``.

    Read from a new connection to that database (per-table counters are per database). Its 3
    autocommit statements end up in the next reading's commits; ``counter_delta`` subtracts
    them. Take the second reading after the measured processes have exited (an exiting
    backend flushes its counters; a live one may hold them for up to 10 s).
    """
    import psycopg

    with psycopg.connect(**conninfo(dbname), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        commits, rollbacks = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        where = "WHERE schemaname = %s" if schema else ""
        rows = conn.execute(
            f"SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables {where}",
            [schema] if schema else [],
        ).fetchall()
    return {"commits": commits, "rollbacks": rollbacks, "tables": {r[0]: [r[1], r[2], r[3]] for r in rows}}


def counter_delta(before: dict[str, Any], after: dict[str, Any], runs: int) -> dict[str, Any]:
    """Writes (INSERT/UPDATE/DELETE rows) and commits per run between two ``pg_counters``."""
    per_table: dict[str, list[float]] = {}
    for name, (ins, upd, dele) in after["tables"].items():
        b = before["tables"].get(name, [0, 0, 0])
        d = [ins - b[0], upd - b[1], dele - b[2]]
        if any(d):
            per_table[name] = [x / runs for x in d]
    writes = sum(sum(v) for v in per_table.values())
    # The first reader's own 3 autocommit statements.
    commits = after["commits"] - before["commits"] - 3
    return {
        "writes_per_run": writes,
        "inserts_per_run": sum(v[0] for v in per_table.values()),
        "updates_per_run": sum(v[1] for v in per_table.values()),
        "deletes_per_run": sum(v[2] for v in per_table.values()),
        "writes_by_table": per_table,
        "commits_per_run": commits / runs,
        "rollbacks": after["rollbacks"] - before["rollbacks"],
    }


def run_snapshot(rev: str, argv: list[str]) -> int:
    """Export celery_durable/ at ``rev`` next to a copy of bench/, then run ``-m bench.peers`` from there.

    As bench/run.py's ``--snapshot``: others may edit the working tree while this runs.
    """
    import shutil

    git = {"cwd": ROOT, "capture_output": True, "timeout": 60, "check": True}
    commit = subprocess.run(["git", "rev-parse", "--short", rev], text=True, **git).stdout.strip()
    target = VAR / f"src-{commit}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "celery_durable"], **git).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    shutil.copytree(ROOT / "bench", target / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    rest = [a for i, a in enumerate(argv) if a != "--snapshot" and not (i and argv[i - 1] == "--snapshot")]
    log(f"snapshot of {commit} in {target}")
    environ = {**os.environ, "BENCH_SNAPSHOT_OF": commit, "PYTHONPATH": str(target)}
    cmd = ["timeout", "-k", "30", "7200", sys.executable, "-m", "bench.peers", *rest]
    return subprocess.call(cmd, env=environ, cwd=target)
