"""Scale checks (issue 6): the hot paths against 1,000,000 runs in PostgreSQL, with budgets.

    .venv/bin/python bench/scale.py                  # generate durable_scale if needed (~8 min), measure
    .venv/bin/python bench/scale.py --runs 100000    # a smaller table (quick check of the script)
    .venv/bin/python bench/scale.py --only tick_idle --only changelist
    .venv/bin/python bench/scale.py --drop           # drop the database (frees ~3 GB)

One dataset (bench/scale_data.py: finished, sleeping, pending in a deep backlog, waiting,
queued and running runs with their steps, 1,000,000 flow-state rows) in the dedicated
database ``durable_scale``; Redis db 6 is the broker (flushed; no worker consumes it).
Every operation runs in this process through the library's own functions (the waker's
``tick()``, ``.delay()``, ``slots.release()``, the admin view, ``durable_prune``), warmed up,
then timed ``--reps`` times (wall time, connection kept), then repeated with PostgreSQL's
``auto_explain`` reporting each statement's plan and executor time to this session as a
notice (server-side time, and the indexes each statement used). Each rep restores the
rows it changed, so the dataset stays the same (prune generates its 100,000 runs again).
Before each phase the script waits while another benchmark runs (bench/quiet.py) and
records ``uptime``. Results: stdout (markdown) and var/bench/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB = os.environ.setdefault("BENCH_PG_NAME", "durable_scale")
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.scale_settings"
os.environ["BENCH_BROKER_DB"] = "6"
os.environ["BENCH_RESULTS"] = "none"

PHASES = ("tick_idle", "tick_due", "sweeper", "reaper", "admission", "slot_hold", "handoff", "changelist", "prune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--flow-rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=300, help="timed reps of the cheap operations")
    parser.add_argument("--prune", type=int, default=100_000, help="finished runs durable_prune deletes")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--only", action="append", choices=PHASES)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks")
    parser.add_argument("--drop", action="store_true", help="drop the database and exit")
    args = parser.parse_args(argv)
    command = "bench/scale.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    import psycopg

    from bench import quiet, scale_data, scale_phases, scale_prune
    from bench.scale_measure import flush_broker, log

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        if args.drop:
            admin.execute(f'DROP DATABASE IF EXISTS "{DB}"')
            log(f"dropped {DB}")
            return 0
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone():
            admin.execute(f'CREATE DATABASE "{DB}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    info = scale_data.meta()
    if args.regenerate or not info or info.get("layout") != scale_data.LAYOUT or info.get("runs") != args.runs:
        wait_info = quiet.wait(log) if not args.no_wait else {}
        log(f"generating {args.runs} runs in {DB} ({wait_info.get('uptime', quiet.uptime())})")
        info = scale_data.generate(args.runs, args.flow_rows)
    results: dict = {"command": command, "dataset": info, "versions": scale_phases.versions(), "phases": {}}
    started = time.monotonic()
    try:
        for phase in args.only or PHASES:
            waited = {} if args.no_wait else quiet.wait(log)
            scale_data.freshen()
            results["phases"][phase] = {"uptime": quiet.uptime(), **waited}
            measure = scale_prune.prune if phase == "prune" else getattr(scale_phases, phase)
            results["phases"][phase].update(measure(args, info))
            results["phases"][phase]["uptime_after"] = quiet.uptime()
    finally:
        flush_broker()
        results["elapsed_min"] = round((time.monotonic() - started) / 60, 1)
        results["table"] = scale_data.describe()
        path = ROOT / "var" / "bench" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=str))
        log(f"raw results: {path}")
    from bench.scale_report import report

    sys.stdout.write(report(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
