"""Peer comparison (issue 7): this library against plain Celery and DBOS, same workloads, one run.

    .venv/bin/python -m bench.peers --quick        # small sizes, ~2 min on 2 cores
    .venv/bin/python -m bench.peers                # full sizes, 1 repetition, ~3 min on a quiet machine
    .venv/bin/python -m bench.peers --only sleep   # workloads: workflow, concurrency, sleep
    .venv/bin/python -m bench.peers --snapshot HEAD  # celery_durable/ as committed, not the working tree
    .venv/bin/python -m bench.peers --only sleep --cheap-ignore  # experiment: bench/cheap_ignore.py

Workloads (each system in its own subprocesses; method in docs/benchmarks.md, "Peer
comparison (issue 7)"):

1. ``workflow``: a 3-step workflow with trivial steps. celery-durable (one durable task, 3
   ``step.run``) and plain Celery (a chain of 3 tasks, Redis results) through bench/drive.py:
   a backlog drained by a ``celery worker -P prefork -c 2``, and one at a time (latency). DBOS
   (three ``@DBOS.step``) called directly from 2 processes (the same parallelism as 2 pool
   processes) and from 1 (latency), and drained from its queue by 2 processes. Writes and
   commits per run from ``pg_stat_user_tables`` / ``pg_stat_database`` of each system's own
   database; statements per run counted in-process (bench/statements.py, SQLAlchemy events).
2. ``concurrency``: one key, limit 5, a backlog. celery-durable and DBOS's partitioned queue
   through bench/flow_phases.py's ``limited``, ``handoff`` and ``dbos`` phases (as
   bench/flow_control.py runs them, on bench/peers' resources: bench/peers/flow.py); plain
   Celery with Redis ``SET NX EX`` locks + ``self.retry(countdown=1)`` (bench/peers/tasks.py),
   with the same sizes, bodies and pool sizes.
3. ``sleep``: N runs that each sleep 1 s durably, submitted at once: celery-durable
   ``step.sleep``, plain Celery ``countdown=1``, ``DBOS.sleep``.

Resources: PostgreSQL databases ``durable_peers_bench``, ``dbos_peers_bench``,
``durable_peers_flow`` and ``dbos_peers_flow`` (dropped and created here), Redis dbs 12, 15
and 8 (flushed). Workers are real prefork subprocesses under ``timeout``, killed and reaped
after each phase; their process groups are listed in var/bench/peers-worker-pgids and
peers-flow-worker-pgids and checked at the end. Results:
stdout (markdown) and var/bench/peers-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peers import common  # noqa: E402
from bench.peers.common import log  # noqa: E402

PY = sys.executable
WORKLOADS = ("workflow", "concurrency", "sleep")
SIZES = {
    # drain N, serial N, DBOS direct N per process (2 processes), key backlog, paced backlog and
    # its pool (issue 14: prefork -c 8),
    # DBOS window at 1 s polling, cap at 10 ms polling, sleepers
    "quick": {
        "drain": 300,
        "serial": 60,
        "direct": 150,
        "backlog": 400,
        "paced": 300,
        "paced_pool": 8,
        "dbos_s": 10,
        "fast_s": 30,
        "sleepers": 200,
    },
    "full": {
        "drain": 1000,
        "serial": 150,
        "direct": 500,
        "backlog": 2000,
        "paced": 1000,
        "paced_pool": 8,
        "dbos_s": 30,
        "fast_s": 90,
        "sleepers": 500,
    },
}


def spawn(cmd: list[str], extra: dict[str, str] | None, limit: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["timeout", "-k", "15", str(int(limit)), *cmd],
        cwd=ROOT,
        env=common.env(**(extra or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def collect(proc: subprocess.Popen[str], limit: float, whole: bool = False) -> Any:
    """Wait for a ``spawn``-ed command; its last stdout line (or all of it) as JSON."""
    try:
        out, err = proc.communicate(timeout=limit + 30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}:\n{err[-3000:]}")
    return json.loads(out) if whole else json.loads(out.strip().splitlines()[-1])


def call(cmd: list[str], limit: float, extra: dict[str, str] | None = None, whole: bool = False) -> Any:
    return collect(spawn(cmd, extra, limit), limit, whole)


def module(name: str, *args: Any) -> list[str]:
    return [PY, "-m", name, *map(str, args)]


BROKERS = {"redis": "", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}


# --- workload 1: a 3-step workflow -------------------------------------------------------


def workflow(size: dict, rep: int, first_rep: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if first_rep:
        log("workflow: statements per celery-durable run (in-process)")
        out["statements"] = call(module("bench.statements", "--timed", "100"), 300)
    sides = [("celery", lambda: celery_workflow(size, rep)), ("dbos", lambda: dbos_workflow(size))]
    for name, fn in sides if rep % 2 == 0 else reversed(sides):
        out[name] = fn()
    return out


def celery_workflow(size: dict, rep: int) -> dict[str, Any]:
    pairs = [
        (f"drain:chain3:{size['drain']}", f"drain:durable3:{size['drain']}"),
        (f"serial:chain3:{size['serial']}", f"serial:durable3:{size['serial']}"),
    ]
    cmd = module("bench.drive", "--label", f"peers-{rep}", "--warmup", "20")
    for base, cand in pairs:
        for item in (base, cand) if rep % 2 == 0 else (cand, base):
            cmd += ["--item", item]
    results = os.environ.get("BENCH_PEERS_RESULTS", "rows-redis")
    log(f"workflow: celery-durable and Celery chain (bench.drive, results {results}): {' '.join(cmd[6:])}")
    result = call(cmd, 900, {"BENCH_RESULTS": results})
    items = {f"{i['mode']}:{i['workload']}": i for i in result["items"]}
    for key, item in items.items():
        figure = f"{item['drain_per_s']:.0f}/s" if key.startswith("drain") else f"p50 {item['p50_ms']:.1f} ms"
        log(f"  {key}: {figure}, worker exit {item['worker_exit']}")
    return items


def dbos_workflow(size: dict) -> dict[str, Any]:
    n = size["direct"]
    out: dict[str, Any] = {}
    before = common.pg_counters(common.DBOS_DB, "dbos")
    start_at = time.time() + 8  # both processes launched and warmed up by then
    log(f"workflow: DBOS direct, 2 processes x {n}")
    busy0 = machine()
    procs = [
        spawn(
            module("bench.peers.dbos_side", "--role", "direct", "--runs", n, "--start-at", start_at),
            {"DBOS__VMID": f"peers-direct-{k}"},
            300,
        )
        for k in range(2)
    ]
    direct = [collect(p, 300) for p in procs]
    busy1 = machine()
    after = common.pg_counters(common.DBOS_DB, "dbos")
    total = sum(d["n"] + d["warmup"] for d in direct)
    span = max(d["last"] for d in direct) - min(d["first"] for d in direct)
    out["direct2"] = {
        "n": 2 * n,
        "rate_per_s": 2 * n / span,
        "late_start_s": max(d["first"] for d in direct) - start_at,
        "cpu_ms_per_run": sum(d["cpu_ms_per_run"] for d in direct) / 2,
        "machine_busy_pct": common.busy_pct(busy0, busy1),
        "per_process": direct,
        **common.counter_delta(before, after, total),
    }
    log(
        f"  direct x2: {out['direct2']['rate_per_s']:.0f}/s, writes {out['direct2']['writes_per_run']:.2f}, "
        f"commits {out['direct2']['commits_per_run']:.2f}"
    )
    log(f"workflow: DBOS direct, 1 process x {size['direct']} (latency, statements)")
    out["serial"] = call(
        module("bench.peers.dbos_side", "--role", "direct", "--runs", size["direct"], "--count-statements"),
        300,
        {"DBOS__VMID": "peers-serial"},
    )
    log(f"  serial: p50 {out['serial']['p50_ms']:.1f} ms, {out['serial']['rate_per_s']:.0f}/s")
    out["queue"] = dbos_queue(size["drain"])
    return out


def dbos_queue(n: int) -> dict[str, Any]:
    import psycopg

    log(f"workflow: DBOS queue, enqueue {n}, then 2 processes drain it (1 s polling, no limit)")
    enqueue = call(
        module("bench.peers.dbos_side", "--role", "enqueue", "--runs", n), 300, {"DBOS__VMID": "peers-enqueue"}
    )
    since = int(time.time() * 1000)
    busy0 = machine()
    procs = [
        spawn(module("bench.peers.dbos_side", "--role", "drain", "--until", n), {"DBOS__VMID": f"peers-q-{k}"}, 300)
        for k in range(2)
    ]
    drains = [collect(p, 300) for p in procs]
    busy1 = machine()
    with psycopg.connect(**common.conninfo(common.DBOS_DB)) as conn:
        first, last, done = conn.execute(
            "SELECT min(started_at_epoch_ms), max(updated_at), count(*) FROM dbos.workflow_status"
            " WHERE queue_name = 'peers_wf3' AND status = 'SUCCESS' AND started_at_epoch_ms >= %s",
            [since],
        ).fetchone()
    rate = done / ((last - first) / 1000) if done else float("nan")
    log(f"  queue drain: {rate:.0f}/s ({done} workflows)")
    return {
        "n": done,
        "rate_per_s": rate,
        "enqueue_per_s": enqueue["enqueue_per_s"],
        "drains": drains,
        "machine_busy_pct": common.busy_pct(busy0, busy1),
    }


def machine() -> tuple[int, int]:
    from bench import harness

    return harness.machine_jiffies()


# --- workload 2: per-key concurrency -----------------------------------------------------


def concurrency(size: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    args = ["--runs", size["backlog"], "--handoff-runs", size["paced"], "--handoff-pool", size["paced_pool"]]
    args += ["--dbos-seconds", size["dbos_s"], "--dbos-fast-seconds", size["fast_s"]]
    log(f"concurrency: bench/flow_phases.py's limited, handoff and dbos phases: {' '.join(map(str, args))}")
    limit = 600 + size["backlog"] / 5 + size["dbos_s"] + size["fast_s"]
    out["flow"] = call(module("bench.peers.flow", *args), limit)
    for phase in ("limited", "handoff"):
        log(f"  celery-durable {phase}: {out['flow'][phase]['rate_per_s']:.0f}/s")
    for label in ("default", "fast"):
        log(f"  DBOS {label}: {out['flow']['dbos'][label]['rate_per_s']:.1f}/s")
    locks = (("lock", size["backlog"], 0.0, 2), ("lock_paced", size["paced"], 0.01, size["paced_pool"]))
    for name, runs, seconds, pool in locks:
        log(f"concurrency: plain Celery + Redis lock, {runs} runs, body {seconds * 1000:.0f} ms, prefork -c {pool}")
        out[name] = call(
            module(
                "bench.peers.celery_side",
                "--phase",
                "lock",
                "--runs",
                runs,
                "--seconds",
                seconds,
                "--concurrency",
                pool,
            ),
            600,
            {"BENCH_RESULTS": "none", "BENCH_DB_REUSE": "1"},
        )
        log(f"  {out[name]['rate_per_s']:.0f}/s, {out[name]['misses']} lock misses, peak {out[name]['peak_running']}")
    return out


# --- workload 3: a 1-second durable sleep ------------------------------------------------


def sleep(size: dict, rep: int) -> dict[str, Any]:
    n = size["sleepers"]
    out: dict[str, Any] = {}
    phases = ["sleep-durable", "sleep-celery"] if rep % 2 == 0 else ["sleep-celery", "sleep-durable"]
    for phase in phases:
        log(f"sleep: {phase}, {n} sleepers")
        out[phase] = call(
            module("bench.peers.celery_side", "--phase", phase, "--runs", n),
            600,
            {"BENCH_RESULTS": "none", "BENCH_DB_REUSE": "1"},
        )
    log(f"sleep: DBOS.sleep, {n} sleepers")
    raw = call(module("bench.peers.dbos_side", "--role", "sleep", "--runs", n), 600, {"DBOS__VMID": "peers-sleep"})
    stamps = raw.pop("stamps")
    lateness = [1000 * (woke - due) for due, woke, _done in stamps]
    last = max(done for _d, _w, done in stamps)
    out["dbos"] = {
        **raw,
        "n": n,
        "rate_per_s": n / (last - raw["first"]),
        "total_s": last - raw["first"],
        "lateness_ms": common.summary(lateness),
        "early": sum(1 for x in lateness if x < 0),
    }
    for name, figures in out.items():
        lat = figures["lateness_ms"]
        log(f"  {name}: {figures['rate_per_s']:.0f} runs/s, lateness p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")
    return out


# --- main --------------------------------------------------------------------------------


def setup() -> None:
    import redis

    for name in (common.OURS_DB, common.DBOS_DB):
        common.recreate(name)
    for db in (common.BROKER_DB, common.RESULTS_DB):
        redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}").flushdb()
    call(module("bench.peers.dbos_side", "--role", "setup"), 120, {"DBOS__VMID": "peers-setup"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (~2 min)")
    parser.add_argument("--sleepers", type=int, help="runs of the sleep workload (default 500, 200 with --quick)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of workloads 1 and 3 (default 1)")
    parser.add_argument("--only", action="append", choices=WORKLOADS, help="run only these workloads (repeatable)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait while another bench/ script runs")
    parser.add_argument("--snapshot", metavar="REV", help="benchmark celery_durable/ as of this git revision")
    parser.add_argument(
        "--results",
        choices=["rows-redis", "redis"],
        default="rows-redis",
        help="workflow result backends: durable runs read from their rows, the chain's in Redis (default); "
        "or both in Redis",
    )
    parser.add_argument(
        "--broker",
        choices=sorted(BROKERS),
        default="redis",
        help="the Celery broker of the sleep workload (the other workloads need Redis)",
    )
    parser.add_argument(
        "--prefetch", type=int, help="worker_prefetch_multiplier of every Celery worker (ours and the baselines')"
    )
    parser.add_argument(
        "--pg-prepared",
        action="store_true",
        help="Django's PostgreSQL connections bind parameters on the server and prepare repeated statements "
        "(ours and the Celery baselines'; DBOS's SQLAlchemy + psycopg does by default)",
    )
    parser.add_argument(
        "--cheap-ignore",
        action="store_true",
        help="experiment: every Celery worker's tracer skips the traceback of Ignore (bench/cheap_ignore.py), "
        "what an upstream fix would save a suspension",
    )
    args = parser.parse_args(argv)
    if args.cheap_ignore:
        os.environ["BENCH_CHEAP_IGNORE"] = "1"  # inherited by every subprocess (bench/peers/app.py)
    if args.pg_prepared:
        os.environ["BENCH_PG_SERVER_BINDING"] = "1"  # inherited by every subprocess (bench/settings.py)
    # The workflow's result backends: durable runs read from their rows and the chain in Redis
    # (rows-redis, the default), or both in Redis (redis: the figures before DurableResultBackend).
    os.environ["BENCH_PEERS_RESULTS"] = args.results
    if args.broker != "redis":
        if set(args.only or WORKLOADS) != {"sleep"}:
            parser.error("--broker rabbitmq measures the sleep workload only: add --only sleep")
        os.environ["BENCH_BROKER_URL"] = BROKERS[args.broker]  # inherited by every subprocess
    if args.prefetch is not None:
        os.environ["BENCH_PREFETCH"] = str(args.prefetch)  # inherited by every subprocess (common.env)
    if args.snapshot:
        return common.run_snapshot(args.snapshot, argv if argv is not None else sys.argv[1:])
    from bench.peers.report import report

    size = SIZES["quick" if args.quick else "full"]
    if args.sleepers:
        size = {**size, "sleepers": args.sleepers}
    wanted = [w for w in WORKLOADS if not args.only or w in args.only]
    shown = argv if argv is not None else sys.argv[1:]
    if os.environ.get("BENCH_SNAPSHOT_OF"):
        shown = ["--snapshot", os.environ["BENCH_SNAPSHOT_OF"], *shown]
    command = ".venv/bin/python -m bench.peers" + (" " + " ".join(shown)).rstrip()
    common.VAR.mkdir(parents=True, exist_ok=True)
    (common.VAR / common.PGIDS).write_text("")
    if not args.no_wait:
        waited = common.wait_for_other_benchmarks(1800)
        if waited > 1:
            log(f"waited {waited:.0f}s for other benchmarks")
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": command,
        "size": size,
        "uptime_before": common.uptime(),
        "versions": common.versions(),
        "reps": [],
        "failures": [],
    }
    log(f"uptime before: {results['uptime_before']}")
    try:
        setup()
        for rep in range(args.reps):
            entry: dict[str, Any] = {}
            for name in wanted:
                if name == "concurrency" and rep > 0:
                    continue  # one DBOS partitioned-queue window per invocation is enough
                try:
                    if name == "workflow":
                        entry[name] = workflow(size, rep, rep == 0)
                    elif name == "concurrency":
                        entry[name] = concurrency(size)
                    else:
                        entry[name] = sleep(size, rep)
                except Exception as exc:
                    log(f"FAILED {name} (rep {rep + 1}): {exc}")
                    results["failures"].append(f"rep {rep + 1} {name}: {str(exc).strip().splitlines()[-1][:300]}")
            results["reps"].append(entry)
    finally:
        results["leftover_processes"] = common.leftovers()
        results["uptime_after"] = common.uptime()
        results["elapsed_min"] = (time.monotonic() - started) / 60
        path = common.VAR / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(results, indent=1, default=str))
        log(f"raw results: {path}")
    sys.stdout.write(report(results) + "\n")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
