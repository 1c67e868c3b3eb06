"""Fair backlog benchmark (issue 15): 10 tenants' backlog drained FIFO and round robin.

    .venv/bin/python bench/flow_fair.py --runs 1000     # ~1 min on 2 cores

Redis (db 11, flushed here) and PostgreSQL (database ``durable_fair_bench``, dropped and
created here) on 127.0.0.1; real ``celery worker -P prefork -c 2`` subprocesses of
``bench.flow_app`` (killed and reaped after each phase, their process groups listed in
var/bench/fair-worker-pgids and checked at the end). Each phase enqueues N runs of one
``Concurrency(limit=5, key="key")`` key with the worker away, in blocks per tenant (tenant 0's
runs first, then tenant 1's, ...: FIFO serves tenant 0 entirely first, the fair order moves
the cursor at every promotion), then drains it (bench/flow_phases.py ``drain`` method):

``fifo``  ``bench.fc.fifo10``: no ``fair_key``; the plain backlog order.
``fair``  ``bench.fc.fair10``: ``fair_key="tenant"``; round robin over the 10 tenants.

Prints the drain rates (runs per second over the run rows: N / (last finished_at - first
started_at)) and their ratio, and checks the fair drain's order: tenant 9's first run starts
among the first 10 + 4 starts (the 5 admitted at once are tenant 0's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DB = "durable_fair_bench"
BROKER_DB = "11"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
os.environ["BENCH_PG_NAME"] = DB
os.environ["BENCH_BROKER_DB"] = BROKER_DB
os.environ["BENCH_RESULTS"] = "none"
os.environ["BENCH_DB_REUSE"] = "1"

from bench import flow_phases as phases  # noqa: E402

phases.PGIDS = phases.VAR / "fair-worker-pgids"  # not the flow bench's file: both may run
TENANTS = 10


def setup() -> None:
    import django
    import redis

    phases.VAR.mkdir(parents=True, exist_ok=True)
    phases.PGIDS.write_text("")
    with phases.admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from bench.flow_app import app

    assert app.conf.broker_url.endswith(f"/{BROKER_DB}"), app.conf.broker_url
    redis.Redis.from_url(app.conf.broker_url).flushdb()
    app.set_default()


def drain(kind: str, n: int) -> dict:
    from bench import flow_app

    task = flow_app.fair10 if kind == "fair" else flow_app.fifo10
    per_tenant = n // TENANTS
    phases.log(f"drain {kind}: enqueue {n}")
    with phases.running(phases.IDLE_QUEUE, 2, f"fair-{kind}") as worker:
        t0 = time.perf_counter()
        for tenant in range(TENANTS):
            for i in range(per_tenant):
                task.delay(phases.KEY, i, f"tenant-{tenant}")
        enqueue_rate = n / (time.perf_counter() - t0)
        wall = phases.wait_completed_after(worker, task.name, n)
    # The sweeper may have republished the runs admitted while the worker consumed only the
    # idle queue: their duplicate messages must not reach the next phase's worker.
    phases.broker().flushdb()
    starts, finishes = phases.run_times(task.name)
    figures = phases.timing(starts, finishes) | phases.hop_ms(task.name) | {"inline_pct": inline_pct(task.name)}
    phases.log(f"drain {kind}: {figures['rate_per_s']:.0f}/s over the run rows, {n / wall:.0f}/s wall")
    return {**figures, "enqueue_per_s": enqueue_rate, "wall_s": wall, "first_start_of": first_starts(task.name)}


def inline_pct(task: str) -> float:
    """Share of the runs started within 5 ms of their promotion (run inline by the releasing process)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT avg(CASE WHEN started_at - published_at < interval '5 ms' THEN 100.0 ELSE 0 END)"
            " FROM celery_durable_run WHERE task_name = %s AND status = 'completed'",
            [task],
        )
        return float(cur.fetchone()[0] or 0)


def first_starts(task: str) -> dict[str, int]:
    """Per tenant, the rank of its first run's start among all starts."""
    from celery_durable.models import Run

    order = Run.objects.filter(task_name=task).order_by("started_at", "id").values_list("fair_value", "args")
    ranks: dict[str, int] = {}
    for rank, (_fair, args) in enumerate(order):
        ranks.setdefault(json.loads(args)[2], rank)
    return ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000, help="backlog size (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=1, help="fifo/fair pairs, alternated")
    args = parser.parse_args(argv)
    setup()
    results: dict = {"runs": args.runs, "rounds": []}
    try:
        for _ in range(args.rounds):
            pair = {kind: drain(kind, args.runs) for kind in ("fifo", "fair")}
            from celery_durable.models import Run

            Run.objects.all().delete()
            results["rounds"].append(pair)
    finally:
        results["leftover_processes"] = phases.leftovers()
    fifo = sum(r["fifo"]["rate_per_s"] for r in results["rounds"]) / args.rounds
    fair = sum(r["fair"]["rate_per_s"] for r in results["rounds"]) / args.rounds
    results["ratio"] = fair / fifo
    tenant9 = results["rounds"][-1]["fair"]["first_start_of"].get("tenant-9")
    sys.stdout.write(
        f"| backlog | FIFO runs/s | fair runs/s | fair / FIFO |\n|---|---|---|---|\n"
        f"| {args.runs} runs, 10 tenants | {fifo:.0f} | {fair:.0f} | {100 * fair / fifo:.0f} % |\n"
        f"fair order: tenant-9's first run started at rank {tenant9} "
        f"(FIFO: {results['rounds'][-1]['fifo']['first_start_of'].get('tenant-9')})\n"
    )
    path = phases.VAR / f"fair-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    phases.log(f"raw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
