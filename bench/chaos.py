"""The chaos suite's long form: the tests/chaos workload and faults for N minutes, then the checker.

    .venv/bin/python bench/chaos.py --minutes 10 --broker redis
    .venv/bin/python bench/chaos.py --minutes 10 --broker rabbitmq
    .venv/bin/python bench/chaos.py --minutes 10 --broker redis --seed 123456   # replay a seed

Three workers (w0 and w1 with 3 pool processes, w1's waker on a jumpable clock; w2 with 2
in its own network namespace) run a mixed workload (tests/chaos/workload.py: multi-step runs
with atomic steps, sleeps, waits for events, child runs, per-key concurrency, cancellations)
while a fault lands every few seconds, kinds in a random order: SIGKILL of a pool process or
a whole worker, duplicated messages, dropped database sessions, waker clock jumps, a frozen
worker, the namespaced worker cut off, restarts of PostgreSQL and of the broker (skipped,
and counted as skipped, while someone else's tests or benchmarks run on this machine; a
skip ends the run with an error under CELERY_DURABLE_REQUIRE_SERVICES=1).
Then the faults are undone, the remaining events sent, and every run must finish.

The seed (``--seed``, else ``$DURABLE_CHAOS_SEED``, else a new one) is printed first; every
random choice of the session derives from it (tests/chaos/seeds.py), so the same seed
replays the same fault order, workload and fault targets (not the workers' timing).

Prints: runs completed / lost / duplicated step bodies / limit violations, faults by kind,
recovery time after a worker kill (lease expiry -> next claim, database clock, p50/p99), and
every violation the checker found (exit status 1 if any). Results also go to
var/bench/chaos-<broker>-<time>.json. Needs root (network namespace, service restarts).
Dedicated database ``durable_chaos_bench`` (dropped and re-created); Redis db 7 or RabbitMQ's
``/`` vhost with a queue of its own.
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

DB_NAME = "durable_chaos_bench"
BROKERS = {"redis": "redis://127.0.0.1:6379/7", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}


def setup(broker: str) -> None:
    import psycopg

    from tests.chaos.config import HEARTBEAT, LEASE, REPUBLISH, WAKER

    os.environ.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DURABLE_TEST_DB="postgres",
        DURABLE_TEST_PG_NAME=DB_NAME,
        DURABLE_TEST_BROKER_URL=broker,
        DURABLE_TEST_LEASE_SECONDS=str(LEASE),
        DURABLE_TEST_HEARTBEAT_SECONDS=str(HEARTBEAT),
        DURABLE_TEST_WAKER_INTERVAL=str(WAKER),
        DURABLE_TEST_REPUBLISH_AFTER=str(REPUBLISH),
    )
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _spread(values: list[float]) -> dict[str, float]:
    from tests.chaos.harness import percentile

    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values, default=float("nan"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--seed", default=None, help="replay this seed (default: $DURABLE_CHAOS_SEED or a new one)")
    parser.add_argument("--fault-every", type=float, default=6.0, help="mean seconds between faults")
    parser.add_argument("--rate", type=float, default=2.0, help="runs called per second (bursts count once)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: network namespaces and service restarts")
    from tests.chaos import seeds

    try:
        seed = seeds.chaos_seed(args.seed)
    except seeds.BadSeed as exc:
        parser.error(str(exc))
    print(seeds.banner(seed), flush=True)
    broker = BROKERS[args.broker]
    setup(broker)

    from tests.chaos import checker, harness, procs

    stamp = time.strftime("%Y%m%dT%H%M%S")
    directory = ROOT / "var" / "bench" / f"chaos-{args.broker}-{stamp}"
    directory.mkdir(parents=True, exist_ok=True)
    print(f"chaos: {args.minutes} min on {args.broker}, seed {seed}, logs in {directory}", flush=True)
    last = [time.monotonic()]
    began = time.monotonic()

    def progress(workload, injector) -> None:
        if time.monotonic() - last[0] >= 30:
            last[0] = time.monotonic()
            print(
                f"  {time.monotonic() - began:5.0f}s: {len(workload.called)} runs called, "
                f"faults {dict(sorted(injector.counts.items()))}",
                flush=True,
            )

    fleet = harness.Fleet(broker=broker, db_name=DB_NAME, directory=directory)
    try:
        session = harness.run(
            fleet, seed, args.minutes * 60, None, rate=args.rate,
            fault_every=args.fault_every, drain_timeout=300, progress=progress,
        )  # fmt: skip
        drain = time.monotonic() - began - args.minutes * 60
        workload = session.workload
        report = checker.check(workload.called, harness.LEASE, overrides=workload.overrides, batched=workload.batched)
        recoveries = harness.recoveries()
    finally:
        fleet.close()
        procs.ensure_services_up()

    faults = dict(sorted(session.injector.counts.items()))
    figures = {
        "broker": args.broker,
        "minutes": args.minutes,
        "seed": seed,
        "runs": report.runs,
        "runs_called": len(session.workload.called),
        "completed": report.completed,
        "cancelled": report.cancelled,
        "completed_after_cancel_request": report.completed_after_cancel,
        "lost": report.lost,
        "step_bodies": report.bodies,
        "duplicated_step_bodies": report.duplicated,
        "duplicated_explained_by": report.explained_by,
        "limit_violations": report.limit_violations,
        "peak_per_key": report.peak,
        "violations": report.violations,
        "faults": faults,
        "recovery_seconds": {
            "count": len(recoveries),
            "expiry_to_claim": _spread([r[0] for r in recoveries]),
            "kill_to_claim": _spread([r[1] for r in recoveries]),
            "requeued_early_by_a_jumped_reaper": sum(r[0] < 0 for r in recoveries),
        },
        "drain_seconds": round(drain, 1),
    }
    (ROOT / "var" / "bench" / f"chaos-{args.broker}-{stamp}.json").write_text(json.dumps(figures, indent=2))
    rec = figures["recovery_seconds"]
    print(
        f"\nchaos {args.broker}, {args.minutes:g} min, seed {seed}\n"
        f"  runs: {report.runs} ({len(session.workload.called)} called, the rest child runs); "
        f"completed {report.completed}, cancelled {report.cancelled}, lost {report.lost}\n"
        f"  step bodies: {report.bodies}; duplicated (plain steps re-run after a fault hit their "
        f"execution) {report.duplicated}, by fault {report.explained_by}; "
        f"atomic steps committed twice: 0 unless listed below\n"
        f"  limit violations: {report.limit_violations} (peak per key {report.peak}, limit {checker.LIMIT})\n"
        f"  faults: {faults}\n"
        f"  recovery after a kill, {rec['count']} runs: lease expiry -> next claim p50 "
        f"{rec['expiry_to_claim']['p50']:.2f}s, p99 {rec['expiry_to_claim']['p99']:.2f}s "
        f"({rec['requeued_early_by_a_jumped_reaper']} requeued early by a reaper whose clock ran ahead); "
        f"kill -> next claim p50 {rec['kill_to_claim']['p50']:.2f}s, p99 {rec['kill_to_claim']['p99']:.2f}s, "
        f"max {rec['kill_to_claim']['max']:.2f}s\n"
        f"  drain after the last fault: {drain:.0f}s\n"
        f"  violations: {len(report.violations)}",
        flush=True,
    )
    for line in report.violations[:50]:
        print(f"    {line}")
    if session.diagnosis:
        print(session.diagnosis)
    return 1 if report.violations or session.unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
