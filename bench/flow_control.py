"""Flow-control benchmark (issue 4): per-key concurrency against no limit and DBOS's partitioned queue.

    .venv/bin/python bench/flow_control.py --runs 1000     # quick check, ~2 min on 2 cores
    .venv/bin/python bench/flow_control.py                 # 10,000-run backlogs, ~8 min

Redis (db 10, flushed here) and PostgreSQL (databases ``durable_flow_bench`` and
``dbos_bench``, dropped and created here) on 127.0.0.1; real ``celery worker -P prefork``
subprocesses of ``bench.flow_app`` (under ``timeout``; killed and reaped after each phase,
their process groups listed in var/bench/flow-worker-pgids and checked at the end).
Phases, in this order, in one invocation:

``free`` / ``limited``  N runs of a trivial step-less durable task on ONE key, enqueued
    first (the worker consumes only an idle queue meanwhile), then ``add_consumer`` starts
    the drain (prefork -c 2, worker start-up excluded): without and with
    ``Concurrency(limit=5)``. Drain rate = N / (last ``finished_at`` - first ``started_at``),
    both from the run rows (one clock); the driver's wall clock is reported too.
``handoff``  M runs of the limited key whose body sleeps 10 ms, on a worker with 6 pool
    processes (``--handoff-pool``; more than the limit, so a promoted run never waits for a free process and
    the CPU is not saturated). Hand-off latency: the k-th start (by ``started_at``) minus the
    (k-5)-th finish (by ``finished_at``): at most 5 run at once, so the k-th start needed
    that slot back; it covers the completion, the release and promotion transactions, the
    publish, the broker hop and the claim. The same pairing is applied to the drain
    (there it includes waiting behind the other slot holders for one of 2 processes).
``blocked``  a worker with 5 pool processes: CPU of its process group and of its
    PostgreSQL backends, and the database's commits, over ``--blocked-seconds`` while idle
    with no run at all, then while 5 runs hold the key's slots (sleeping in their body)
    and ``--pending`` runs wait in the backlog.
``dbos``  the same trivial body as a DBOS workflow on a partitioned queue with
    ``partition_concurrency=5``, N workflows on one partition key enqueued first
    (bench/flow_dbos.py), then drained by one DBOS process at the default polling interval
    (1 s; ``--dbos-seconds`` of it: the full backlog would take ~N/5 s) and at 10 ms (up to
    ``--dbos-fast-seconds``), on the same PostgreSQL server. Rates and hand-off from
    ``dbos.workflow_status`` (started_at_epoch_ms, completed_at).

Prints a results table (markdown) and writes var/bench/flow-<time>.json. Figures and the
method: docs/benchmarks.md, section "Flow control (issue 4)".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DB = "durable_flow_bench"
BROKER_DB = "10"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
os.environ["BENCH_PG_NAME"] = DB
os.environ["BENCH_BROKER_DB"] = BROKER_DB
os.environ["BENCH_RESULTS"] = "none"
os.environ["BENCH_DB_REUSE"] = "1"

from bench import flow_phases as phases  # noqa: E402
from bench.flow_report import report  # noqa: E402

PHASES = ("free", "limited", "give-back", "handoff", "blocked", "dbos")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000, help="backlog size of the drains (ours and DBOS)")
    parser.add_argument("--handoff-runs", type=int, default=1_000)
    parser.add_argument("--handoff-pool", type=int, default=6, help="pool processes of the handoff phase")
    parser.add_argument("--pending", type=int, default=1_000, help="backlog while every run is blocked")
    parser.add_argument("--blocked-seconds", type=float, default=10.0)
    parser.add_argument("--dbos-seconds", type=float, default=30.0, help="window at DBOS's default polling")
    parser.add_argument("--dbos-fast-seconds", type=float, default=150.0, help="cap of the 10 ms polling drain")
    parser.add_argument("--skip-dbos", action="store_true")
    parser.add_argument("--only", action="append", choices=PHASES, help="run only these phases (repeatable)")
    args = parser.parse_args(argv)
    command = "bench/flow_control.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    started = time.monotonic()
    uptime_before = phases.uptime()
    phases.log(f"uptime before: {uptime_before}")
    phases.setup()
    results: dict = {"command": command, "uptime_before": uptime_before, "versions": phases.versions()}
    wanted = set(args.only or PHASES) - ({"dbos"} if args.skip_dbos else set())
    try:
        for kind in ("free", "limited", "give-back"):
            if kind in wanted:
                results[kind] = phases.drain(kind, args.runs)
        if "handoff" in wanted:
            results["handoff"] = phases.handoff(args.handoff_runs, pool=args.handoff_pool)
        if "blocked" in wanted:
            results["blocked"] = phases.blocked(args.pending, args.blocked_seconds)
        if "dbos" in wanted:
            results["dbos"] = phases.dbos(args.runs, args.dbos_seconds, args.dbos_fast_seconds)
    finally:
        results["leftover_processes"] = phases.leftovers()
    results["uptime_after"] = phases.uptime()
    results["elapsed_min"] = (time.monotonic() - started) / 60
    text = report(results) if wanted == set(PHASES) else json.dumps(results, indent=1, default=str)
    sys.stdout.write(text + "\n")
    path = phases.VAR / f"flow-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    phases.log(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
