"""DBOS side of the flow-control benchmark (bench/flow_control.py runs it; not run by hand).

A partitioned DBOS queue with ``partition_concurrency=5`` (the same per-key limit as the
celery-durable side), every workflow on one partition key, a trivial workflow body
(``return i + 1``, no steps), on the same PostgreSQL server in its own database
(``dbos_bench``, dropped and created by the driver). Two roles, each its own process:

``enqueue``  launches DBOS listening to no queue (nothing is dequeued), registers the queue
             and enqueues N workflows through ``Queue.enqueue``: the backlog.
``configure`` re-registers the queue with the polling interval under test
             (``on_conflict="always_update"``), listening to no queue: an executor's queue
             thread starts at the stored interval (set after launch, it would start at the
             old one and only decay towards the new one by 10 % per poll).
``execute``  launches DBOS listening to the queue and lets DBOS's queue thread drain
             the backlog until ``--until`` workflows have finished or ``--seconds`` passed
             since the first one started. The driver reads the timings from
             ``dbos.workflow_status`` (started_at_epoch_ms, completed_at): one clock.

Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import sqlalchemy as sa
from dbos import DBOS, SetEnqueueOptions

APP = "flow_bench"
QUEUE = "flow_bench_q"
KEY = "k"
LIMIT = 5
DB = os.environ.get("BENCH_FLOW_DBOS_DB", "dbos_bench")  # bench/peers runs these phases on its own database


def system_url() -> str:
    user = os.environ.get("BENCH_PG_USER", "postgres")
    password = os.environ.get("BENCH_PG_PASSWORD", "")
    host = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
    port = os.environ.get("BENCH_PG_PORT", "5432")
    auth = f"{user}:{password}" if password else user
    return f"postgresql+psycopg://{auth}@{host}:{port}/{DB}"


@DBOS.workflow()
def trivial(i: int) -> int:
    return i + 1


def launch(listen: list[str]) -> None:
    DBOS(config={"name": APP, "system_database_url": system_url(), "log_level": "WARNING"})
    DBOS.listen_queues(listen)
    DBOS.launch()


def register(polling: float) -> object:
    return DBOS.register_queue(
        QUEUE, partition_concurrency=LIMIT, polling_interval_sec=polling, on_conflict="always_update"
    )


def finished_and_first_start(engine: sa.Engine, since_ms: int = 0) -> tuple[int, int | None]:
    """Workflows finished so far, and the first start at or after ``since_ms``."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE status = 'SUCCESS'),"
                " min(started_at_epoch_ms) FILTER (WHERE started_at_epoch_ms >= :since)"
                " FROM dbos.workflow_status WHERE queue_name = :q"
            ),
            {"q": QUEUE, "since": since_ms},
        ).one()
    return int(row[0]), row[1]


def role_enqueue(runs: int) -> dict:
    launch([])
    queue = register(1.0)
    t0 = time.perf_counter()
    with SetEnqueueOptions(queue_partition_key=KEY):
        for i in range(runs):
            queue.enqueue(trivial, i)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - t0
    DBOS.destroy()
    return {"enqueued": runs, "enqueue_per_s": runs / elapsed}


def role_configure(polling: float) -> dict:
    launch([])
    queue = register(polling)
    stored = queue.polling_interval_sec  # type: ignore[attr-defined]
    DBOS.destroy()
    return {"polling_s": stored}


def role_execute(until: int, seconds: float, start_timeout: float) -> dict:
    engine = sa.create_engine(system_url())
    done0, _ = finished_and_first_start(engine)
    t_launch = time.time()
    launch([QUEUE])
    launched_s = time.time() - t_launch
    deadline = time.monotonic() + start_timeout
    first_start_ms = None
    while True:
        done, first_start_ms = finished_and_first_start(engine, int(t_launch * 1000))
        if done >= until:
            break
        if first_start_ms is not None and time.time() > first_start_ms / 1000 + seconds:
            break
        if first_start_ms is None and time.monotonic() > deadline:
            raise RuntimeError("no DBOS workflow started")
        time.sleep(0.05)
    cpu = os.times()
    DBOS.destroy(workflow_completion_timeout_sec=5)
    engine.dispose()
    return {
        "since_ms": int(t_launch * 1000),
        "finished_before": done0,
        "finished_after": done,
        "launch_s": launched_s,
        "process_cpu_s": cpu.user + cpu.system,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["enqueue", "configure", "execute"], required=True)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--polling", type=float, default=1.0)
    parser.add_argument("--until", type=int, default=10_000, help="stop once this many have finished in total")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop this long after the first start")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.role == "enqueue":
        out = role_enqueue(args.runs)
    elif args.role == "configure":
        out = role_configure(args.polling)
    else:
        out = role_execute(args.until, args.seconds, args.start_timeout)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
