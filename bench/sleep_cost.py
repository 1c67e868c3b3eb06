"""What a durable sleep costs the library, in-process: round trips and CPU per execution.

Drives ``bench.peers.tasks.sleeper`` (``step.sleep("s", 1)`` then one step) through
``DurableTestRunner`` on the bench PostgreSQL database: N first executions (to the
suspension), the waker's tick, N resumes. Counts every statement and ``BEGIN``/``COMMIT`` of
one first execution and one resume (``bench.statements.Recorder``), and times all of them
(thread CPU, and wall p50). No Celery worker, no broker, no ``Ignore`` handling by Celery's
tracer: the library's own share of a sleep. Prints one JSON line.

    DJANGO_SETTINGS_MODULE=bench.settings .venv/bin/python -m bench.sleep_cost [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.db import connection

    from bench import harness
    from bench.peers.tasks import sleeper
    from bench.statements import Recorder
    from celery_durable.testing import DurableTestRunner

    harness.ensure_database()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE celery_durable_step, celery_durable_run CASCADE")
    out: dict = {}
    with DurableTestRunner() as runner:
        for _warm in range(2):  # warm-up round (first connection; psycopg prepares after 5 runs)
            [sleeper.delay(i) for i in range(20)]
            runner.run_until_idle()
        sleeper.delay(0)
        recorder = Recorder()
        recorder.install(connection)
        with connection.execute_wrapper(recorder):
            recorder.set_phase("first execution")
            runner.run_next()
            runner.clock.advance(1.5)
            recorder.set_phase("-")
            runner.wake_due()
            recorder.set_phase("resume")
            runner.run_next()
            recorder.set_phase("-")
        out["round_trips"] = {phase: len(sql) for phase, sql in recorder.by_phase().items() if phase != "-"}
        out["sql"] = {phase: [s[:100] for s in sql] for phase, sql in recorder.by_phase().items() if phase != "-"}

        for _i in range(args.runs):
            sleeper.delay(_i)
        cpu, wall = {"first execution": 0.0, "resume": 0.0}, {"first execution": [], "resume": []}
        for phase in ("first execution", "resume"):
            if phase == "resume":
                runner.clock.advance(1.5)
                runner.wake_due()
            for _i in range(args.runs):
                c0, w0 = time.thread_time(), time.perf_counter()
                runner.run_next()  # includes the runner's SELECT of the next due run
                cpu[phase] += time.thread_time() - c0
                wall[phase].append(time.perf_counter() - w0)
        out["cpu_ms"] = {phase: round(1000 * total / args.runs, 3) for phase, total in cpu.items()}
        out["wall_p50_ms"] = {phase: round(1000 * statistics.median(w), 3) for phase, w in wall.items()}
        out["runs"] = args.runs
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
