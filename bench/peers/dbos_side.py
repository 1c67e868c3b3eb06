"""DBOS side of bench/peers (bench/peers/run.py runs each role in a subprocess; one JSON line out).

DBOS on the same PostgreSQL server, in its own system database (``dbos_peers_bench``,
dropped and created by the driver), with DBOS's defaults except the log level. Each process
gets its own executor id (``DBOS__VMID``) so that a launching process does not recover the
workflows another one is running. Roles:

``setup``    launch once (DBOS creates its schema), then destroy.
``direct``   a 3-step workflow (three ``@DBOS.step`` calls of ``x + 1``) called directly,
             N times in a row, after ``--warmup`` calls; the measured loop starts at
             ``--start-at`` (epoch seconds) so that several processes start together.
             Latency per call; with ``--count-statements``, the SQL statements and commits
             the calling thread sends per workflow (SQLAlchemy engine events).
``enqueue``  N of the same workflow enqueued on a DBOS queue (defaults: no concurrency limit,
             1 s polling), listening to no queue (nothing runs).
``drain``    listen to that queue until ``--until`` more workflows finished (DBOS's queue thread
             dequeues them); the driver reads the timings from ``dbos.workflow_status``.
``sleep``    N workflows started at once with ``DBOS.start_workflow``; each takes
             ``due = time.time() + 1``, ``DBOS.sleep(1)``, records when it woke, then one
             step. Lateness = woke - due.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import sqlalchemy as sa
from dbos import DBOS

APP = "peers_bench"
QUEUE = "peers_wf3"
DB = os.environ.get("BENCH_DBOS_DB", "dbos_peers_bench")


def system_url() -> str:
    user = os.environ.get("BENCH_PG_USER", "postgres")
    password = os.environ.get("BENCH_PG_PASSWORD", "")
    host = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
    port = os.environ.get("BENCH_PG_PORT", "5432")
    auth = f"{user}:{password}" if password else user
    return f"postgresql+psycopg://{auth}@{host}:{port}/{DB}"


@DBOS.step()
def inc(x: int) -> int:
    return x + 1


@DBOS.workflow()
def wf3(x: int) -> int:
    return inc(inc(inc(x)))


@DBOS.workflow()
def sleeper(i: int) -> list[float]:
    due = time.time() + 1.0
    DBOS.sleep(1.0)
    woke = time.time()
    inc(i)
    return [due, woke, time.time()]


def launch(listen: list[str] | None = None) -> None:
    DBOS(config={"name": APP, "system_database_url": system_url(), "log_level": "WARNING"})
    if listen is not None:
        DBOS.listen_queues(listen)
    DBOS.launch()


class StatementCounter:
    """SQL statements and commits sent by one thread, through every SQLAlchemy engine."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.kinds: dict[str, int] = {}
        self.commits = 0
        self.on = False
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self.statement)
        sa.event.listen(sa.engine.Engine, "commit", self.commit)

    def statement(self, _conn, _cursor, statement, _params, _context, _many) -> None:
        if self.on and threading.get_ident() == self.thread:
            kind = statement.lstrip().split(None, 1)[0].upper()
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def commit(self, _conn) -> None:
        if self.on and threading.get_ident() == self.thread:
            self.commits += 1

    def per(self, n: int) -> dict:
        writes = sum(v for k, v in self.kinds.items() if k in ("INSERT", "UPDATE", "DELETE"))
        return {
            "statements": sum(self.kinds.values()) / n,
            "write_statements": writes / n,
            "by_kind": {k: v / n for k, v in sorted(self.kinds.items())},
            "commits": self.commits / n,
        }


def backend_cpu(conn) -> dict[int, float]:
    """CPU seconds so far of the other backends connected to this database (all of them ours when alone)."""
    from bench import harness

    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return {pid: harness.cpu_seconds([pid]) for (pid,) in rows}


def role_direct(args: argparse.Namespace) -> dict:
    import psycopg

    from bench.peers.common import conninfo

    counter = StatementCounter() if args.count_statements else None
    launch([])
    for i in range(args.warmup):
        wf3(i)
    while time.time() < args.start_at:
        time.sleep(0.001)
    monitor = psycopg.connect(**conninfo(DB), autocommit=True) if counter is not None else None
    pg0 = backend_cpu(monitor) if monitor is not None else {}
    if counter is not None:
        counter.on = True
    latencies = []
    cpu0 = time.process_time()
    first = time.time()
    for i in range(args.runs):
        t0 = time.perf_counter()
        if wf3(i) != i + 3:
            raise RuntimeError(f"wrong result for {i}")
        latencies.append(1000 * (time.perf_counter() - t0))
    last = time.time()
    cpu = time.process_time() - cpu0
    out = {
        "n": args.runs,
        "warmup": args.warmup,
        "first": first,
        "last": last,
        "rate_per_s": args.runs / (last - first),
        "p50_ms": statistics.median(latencies),
        "p99_ms": sorted(latencies)[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "mean_ms": statistics.fmean(latencies),
        "cpu_ms_per_run": 1000 * cpu / args.runs,
    }
    if counter is not None and monitor is not None:
        counter.on = False
        out["statements"] = counter.per(args.runs)
        pg1 = backend_cpu(monitor)
        monitor.close()
        # Backends alive at both ends (DBOS keeps a pool): their CPU during the loop.
        out["pg_cpu_ms_per_run"] = 1000 * sum(c - pg0.get(pid, c) for pid, c in pg1.items()) / args.runs
    DBOS.destroy(workflow_completion_timeout_sec=5)
    return out


def role_enqueue(args: argparse.Namespace) -> dict:
    launch([])
    queue = DBOS.register_queue(QUEUE, on_conflict="always_update")
    t0 = time.perf_counter()
    for i in range(args.runs):
        queue.enqueue(wf3, i)
    elapsed = time.perf_counter() - t0
    DBOS.destroy()
    return {"enqueued": args.runs, "enqueue_per_s": args.runs / elapsed}


def finished(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM dbos.workflow_status WHERE queue_name = :q AND status = 'SUCCESS'"),
            {"q": QUEUE},
        ).scalar_one()


def role_drain(args: argparse.Namespace) -> dict:
    engine = sa.create_engine(system_url())
    before = finished(engine)  # an earlier repetition's workflows on the same queue
    launch([QUEUE])
    DBOS.register_queue(QUEUE, on_conflict="always_update")
    deadline = time.monotonic() + args.timeout
    while (done := finished(engine) - before) < args.until:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    cpu = os.times()
    DBOS.destroy(workflow_completion_timeout_sec=5)
    engine.dispose()
    return {"finished": done, "process_cpu_s": cpu.user + cpu.system}


def role_sleep(args: argparse.Namespace) -> dict:
    launch([])
    for i in range(args.warmup):
        wf3(i)
    cpu0 = time.process_time()
    first = time.time()
    handles = [DBOS.start_workflow(sleeper, i) for i in range(args.runs)]
    submitted = time.time() - first
    stamps = [h.get_result() for h in handles]
    cpu = time.process_time() - cpu0
    DBOS.destroy(workflow_completion_timeout_sec=5)
    return {
        "first": first,
        "submit_s": submitted,
        "stamps": stamps,
        "process_cpu_ms_per_run": 1000 * cpu / args.runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["setup", "direct", "enqueue", "drain", "sleep"], required=True)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--count-statements", action="store_true")
    parser.add_argument("--until", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.role == "setup":
        launch([])
        DBOS.destroy()
        out: dict = {"ok": True}
    else:
        out = {"direct": role_direct, "enqueue": role_enqueue, "drain": role_drain, "sleep": role_sleep}[args.role](
            args
        )
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
