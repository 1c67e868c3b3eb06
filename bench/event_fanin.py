"""The ``send_event`` call with many runs waiting on its name: its duration and statements.

    .venv/bin/python bench/event_fanin.py --waiting 1000 --rounds 5

Each round suspends N runs of ``bench.waits_for_go`` in ``step.wait_for_event`` (each one
millisecond later on the runner's clock than the one before, so every wait has its own
``timeout_at``), then times one ``send_event("bench.go")`` that resumes them all, counting
its SQL statements, and checks that every run completed with the event. It executes in this
process through ``DurableTestRunner`` on the bench PostgreSQL database (``bench/settings.py``):
the messages of the resumed runs are taken by the runner, not published to a broker.
Prints one JSON line: the call's milliseconds per round, their median, and the statements.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def one_round(runner, waiting: int, round_no: int) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench import tasks
    from celery_durable import send_event
    from celery_durable.models import Run
    from celery_durable.states import RunStatus

    ids = []
    for n in range(waiting):
        runner.clock.advance(0.001)
        ids.append(tasks.waits_for_go.delay(n).id)
    runner.run_until_idle(advance_clock=False)
    if Run.objects.filter(id__in=ids, status=RunStatus.WAITING).count() != waiting:
        raise RuntimeError("not every run is waiting")
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        send_event("bench.go", {"round": round_no})
        elapsed = 1000 * (time.perf_counter() - started)
    runner.run_until_idle(advance_clock=False)
    if [runner.result(run_id) for run_id in ids] != [[n, round_no] for n in range(waiting)]:
        raise RuntimeError("a resumed run did not complete with the event")
    return elapsed, len(captured)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiting", type=int, default=1000, help="runs waiting on the event name per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from bench import harness
    from celery_durable import send_event
    from celery_durable.testing import DurableTestRunner

    harness.fresh_tables("celery_durable_step", "celery_durable_run", "celery_durable_event")
    with DurableTestRunner() as runner:
        send_event("bench.warm_up", {})  # the task modules are imported on the first call
        results = [one_round(runner, args.waiting, n) for n in range(args.rounds)]
    ms = [elapsed for elapsed, _ in results]
    out = {
        "waiting": args.waiting,
        "call_ms": [round(x, 1) for x in ms],
        "call_ms_p50": round(statistics.median(ms), 1),
        "statements": sorted({count for _, count in results}),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
