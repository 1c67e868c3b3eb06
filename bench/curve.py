"""Throughput of durable 3-step runs against the number of worker processes (docs/scaling.md).

    .venv/bin/python bench/curve.py                          # 1, 2, 4 workers x 3 repetitions (~10 min)
    .venv/bin/python bench/curve.py --workers 1 --workers 2 --runs 300 --reps 1
    .venv/bin/python bench/curve.py --layout pool            # one worker, prefork -c N (instead of N workers -c 1)
    .venv/bin/python bench/curve.py --ceiling                # also: pgbench's single-row commit rate, 1-8 clients

Each measurement is bench/drive.py's drain, with N workers instead of one: N real
``celery worker -P prefork -c 1`` processes (``--layout hosts``: each with its own
services thread, as N hosts would have; ``--layout pool``: one worker, ``-c N``) consume an
idle queue while ``--runs`` ``bench.durable3`` runs (3 steps each) are enqueued, then all
start consuming at once; the clock stops when every run is completed and every result is
in the Redis result backend. Worker start-up is excluded. Per run it reports CPU of the
workers, of every PostgreSQL process (the whole server: other sessions' work included), of
Redis and of this driver, from /proc; and transactions, row writes and sessions of the
bench database from pg_stat_database / pg_stat_user_tables (counted after the workers
exit, as bench/drive.py does). Repetitions interleave the sizes (1, 2, 4, then 4, 2, 1...).
Before each measurement it waits while another benchmark runs (bench/quiet.py) and records
``uptime``. Dedicated resources: database ``durable_curve_bench``, Redis dbs 4 (broker) and
5 (results). Raw figures: var/bench/curve-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["BENCH_PG_NAME"] = "durable_curve_bench"
os.environ["BENCH_BROKER_DB"] = "4"
os.environ["BENCH_RESULTS_DB"] = "5"
os.environ["BENCH_DB_REUSE"] = "1"
os.environ["BENCH_PGID_FILE"] = "curve-worker-pgids"
os.environ.setdefault("BENCH_RESULTS", "redis")
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"


DASH = "\u2013"  # en dash, as in the docs


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


class Group:
    """Several workers seen as one by harness.CpuSampler."""

    def __init__(self, workers) -> None:
        self.workers = workers

    def cpu(self) -> float:
        return sum(w.cpu() for w in self.workers)


def drain(bench, processes: int, layout: str, n: int, limit: float) -> dict:
    from django.db import connections

    from bench import drive, harness

    count, concurrency = (processes, 1) if layout == "hosts" else (1, processes)
    tag = uuid.uuid4().hex[:6]
    workers = [
        harness.Worker(drive.IDLE_QUEUE, f"curve{i}-{tag}@localhost", limit, harness.VAR / f"curve-{tag}-{i}.log",
                       concurrency=concurrency)
        for i in range(count)
    ]  # fmt: skip
    hosts = [w.hostname for w in workers]
    exit_codes = []
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(bench.app)
        bench.workload = "durable3"
        bench.reset()
        bench.monitor.execute("SELECT pg_stat_force_next_flush()")
        own0, before = bench.monitor.statements, bench.monitor.snapshot()
        t0 = time.perf_counter()
        for i in range(n):
            bench.submit(i)
        enqueue_s = time.perf_counter() - t0
        if bench.queue_depth() != n:
            raise RuntimeError(f"expected {n} messages, found {bench.queue_depth()}")
        sampler = harness.CpuSampler(Group(workers), bench.monitor)
        pg0 = harness.service_cpu("postgres")
        start = time.perf_counter()
        replies = bench.app.control.add_consumer(drive.QUEUE, destination=hosts, reply=True, timeout=5)
        if len(replies or []) != count:
            raise RuntimeError(f"add_consumer: {len(replies or [])} replies of {count}")
        for _ in workers:
            bench.tasks.noop.apply_async(queue=drive.IDLE_QUEUE)
        want = {
            "runs": n,
            "redis": n if bench.results == "redis" else 0,
            "dcr": n if bench.results == "django-db" else 0,
        }
        deadline = start + limit - 30
        while not (bench.queue_depth() == 0 and bench.complete(want)):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not drained: depth {bench.queue_depth()}, have {bench.present()}")
            time.sleep(drive.POLL)
        elapsed = time.perf_counter() - start
        cpu = sampler.finish(n)
        pg_all = (harness.service_cpu("postgres") - pg0) * 1000 / n
    finally:
        for w in workers:
            exit_codes.append(w.stop())
    connections.close_all()
    bench.monitor.wait_alone()
    bench.monitor.execute("SELECT pg_stat_force_next_flush()")
    delta = harness.stats_delta(before, bench.monitor.snapshot())
    delta["xact_commit"] -= bench.monitor.statements - own0
    return {
        "processes": processes,
        "layout": layout,
        "n": n,
        "runs_per_s": n / elapsed,
        "elapsed_s": elapsed,
        "enqueue_per_s": n / enqueue_s,
        **cpu,
        "pg_all_cpu_ms": pg_all,
        "commits_per_run": delta["xact_commit"] / n,
        "rollbacks": delta["xact_rollback"],
        "run_writes_per_run": (delta["run_ins"] + delta["run_upd"]) / n,
        "step_writes_per_run": (delta["step_ins"] + delta["step_upd"]) / n,
        "sessions": delta["sessions"],
        "worker_exit": exit_codes,
    }


def ceiling(clients: list[int], seconds: int) -> list[dict]:
    """pgbench: single-row INSERT transactions per second per client count, synchronous_commit on and off."""
    from bench.harness import pg_conninfo

    info = pg_conninfo()
    script = ROOT / "var" / "bench" / "curve-commit.sql"
    script.write_text("INSERT INTO bench_commit (v) VALUES (1);\n")
    base = ["-h", info["host"], "-p", info["port"], "-U", info["user"]]
    subprocess.run(["psql", *base, "-qc", "CREATE TABLE IF NOT EXISTS bench_commit (id bigserial, v int)",
                    info["dbname"]], check=True)  # fmt: skip
    out = []
    for sync in ("on", "off"):
        for c in clients:
            result = subprocess.run(
                ["timeout", str(seconds + 30), "pgbench", *base, "-n", "-c", str(c), "-j", str(c), "-T", str(seconds),
                 "-f", str(script), info["dbname"]],
                capture_output=True, text=True, check=True,
                env={**os.environ, "PGOPTIONS": f"-c synchronous_commit={sync}"},
            )  # fmt: skip
            tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))
            out.append({"clients": c, "synchronous_commit": sync, "commits_per_s": tps, "uptime": quiet_uptime()})
            log(f"pgbench {c} client(s), synchronous_commit={sync}: {tps:.0f} commits/s")
    subprocess.run(["psql", *base, "-qc", "DROP TABLE bench_commit", info["dbname"]], check=True)
    return out


def quiet_uptime() -> str:
    from bench import quiet

    return quiet.uptime()


def report(results: dict) -> str:
    lines = [f"`{results['command']}` (commit `{results.get('commit')}`, result backend {results['results']})", ""]
    lines.append(
        f"| processes | runs/s median [min{DASH}max] | worker CPU ms/run | PostgreSQL CPU ms/run (all) | "
        "Redis | driver | machine busy | commits/run | run writes | step writes | uptime (load) |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    by_size: dict[int, list[dict]] = {}
    for m in results["measurements"]:
        by_size.setdefault(m["processes"], []).append(m)
    for size, ms in sorted(by_size.items()):
        rate = [m["runs_per_s"] for m in ms]

        def med(key: str, ms=ms) -> float:
            return statistics.median(m[key] for m in ms)

        loads = ", ".join(m["uptime"].split("load average:")[-1].split(",")[0].strip() for m in ms)
        lines.append(
            f"| {size} | **{statistics.median(rate):.0f}** [{min(rate):.0f}{DASH}{max(rate):.0f}] | "
            f"{med('worker_cpu_ms'):.1f} | "
            f"{med('pg_all_cpu_ms'):.1f} | {med('redis_cpu_ms'):.1f} | {med('driver_cpu_ms'):.1f} | "
            f"{med('machine_busy_pct'):.0f} % | {med('commits_per_run'):.2f} | {med('run_writes_per_run'):.2f} | "
            f"{med('step_writes_per_run'):.2f} | {loads} |"
        )
    if results.get("ceiling"):
        lines += ["", "| pgbench clients | commits/s, synchronous_commit on | off |", "|---:|---:|---:|"]
        rates = {(c["clients"], c["synchronous_commit"]): c["commits_per_s"] for c in results["ceiling"]}
        for clients in sorted({c for c, _s in rates}):
            lines.append(
                f"| {clients} | {rates.get((clients, 'on'), 0):,.0f} | {rates.get((clients, 'off'), 0):,.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, action="append", help="worker processes (repeatable; default 1 2 4)")
    parser.add_argument("--runs", type=int, default=1000, help="3-step runs per drain")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layout", choices=("hosts", "pool"), default="hosts")
    parser.add_argument("--limit", type=float, default=600, help="seconds before a worker is killed")
    parser.add_argument("--ceiling", action="store_true", help="also measure pgbench's commit rate")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks")
    args = parser.parse_args(argv)
    command = "bench/curve.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    import django

    django.setup()
    from bench import drive, harness, quiet

    harness.VAR.mkdir(parents=True, exist_ok=True)
    harness.ensure_database()
    sizes = args.workers or [1, 2, 4]
    bench = drive.Bench(argparse.Namespace(item_timeout=args.limit, label="curve"))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results: dict = {"command": command, "commit": commit.stdout.strip(), "results": bench.results, "measurements": []}
    try:
        for rep in range(args.reps):
            for size in sizes if rep % 2 == 0 else list(reversed(sizes)):
                waited = {} if args.no_wait else quiet.wait(log)
                load = quiet.uptime()
                figures = drain(bench, size, args.layout, args.runs, args.limit)
                figures.update(waited, rep=rep, uptime=load, uptime_after=quiet.uptime())
                log(f"{size} process(es): {figures['runs_per_s']:.0f} runs/s; worker {figures['worker_cpu_ms']:.1f} "
                    f"ms/run, postgres {figures['pg_all_cpu_ms']:.1f} ms/run; {load}")  # fmt: skip
                results["measurements"].append(figures)
        if args.ceiling:
            if not args.no_wait:
                quiet.wait(log)
            results["ceiling_uptime"] = quiet.uptime()
            results["ceiling"] = ceiling([1, 2, 4, 8], 10)
    finally:
        bench.monitor.close()
        path = harness.VAR / f"curve-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=1, default=str))
        log(f"raw results: {path}")
    sys.stdout.write(report(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
