"""Workload 2 of bench/peers: bench/flow_control.py's phases on bench/peers' own resources.

bench/run.py-style isolation: bench/flow_control.py drops and re-creates ``durable_flow_bench``
and ``dbos_bench`` and flushes Redis db 10, so running it while its author runs it breaks
both runs. This runs the same phase functions (bench/flow_phases.py: ``limited`` drain,
``handoff``, ``dbos``) unchanged, on ``durable_peers_flow`` / ``dbos_peers_flow`` and Redis
db 8, with the workers' process groups listed in var/bench/peers-flow-worker-pgids.
bench/peers/run.py runs it in a subprocess; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DB = "durable_peers_flow"
DBOS_DB = "dbos_peers_flow"
BROKER_DB = "8"
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
os.environ["BENCH_PG_NAME"] = DB
os.environ["BENCH_BROKER_DB"] = BROKER_DB
os.environ["BENCH_RESULTS"] = "none"
os.environ["BENCH_DB_REUSE"] = "1"
os.environ["BENCH_FLOW_DBOS_DB"] = DBOS_DB  # read by bench/flow_dbos.py (its subprocesses inherit it)

from bench import flow_phases as phases  # noqa: E402
from bench.peers import common  # noqa: E402

phases.DBOS_DB = DBOS_DB
phases.PGIDS = phases.VAR / "peers-flow-worker-pgids"


def setup() -> None:
    """As flow_phases.setup, on these resources."""
    import django
    import redis
    from django.core.management import call_command

    phases.VAR.mkdir(parents=True, exist_ok=True)
    phases.PGIDS.write_text("")
    for name in (DB, DBOS_DB):
        common.recreate(name)
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from bench.flow_app import app

    assert app.conf.broker_url.endswith(f"/{BROKER_DB}"), app.conf.broker_url
    redis.Redis.from_url(app.conf.broker_url).flushdb()
    app.set_default()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="backlog of the limited drain and of DBOS")
    parser.add_argument("--handoff-runs", type=int, default=1000)
    parser.add_argument("--handoff-pool", type=int, default=8, help="pool processes of the 10 ms drains")
    parser.add_argument("--dbos-seconds", type=float, default=30.0)
    parser.add_argument("--dbos-fast-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    setup()
    out: dict = {}
    try:
        out["limited"] = phases.drain("limited", args.runs)
        out["handoff"] = phases.handoff(args.handoff_runs, pool=args.handoff_pool)
        out["handoff_free"] = phases.handoff(args.handoff_runs, limited=False, pool=args.handoff_pool)
        out["dbos"] = phases.dbos(args.runs, args.dbos_seconds, args.dbos_fast_seconds)
    finally:
        out["leftover_processes"] = phases.leftovers()
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
