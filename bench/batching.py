"""Database cost per call: 1,000 calls batched 100 at a time (``Batch``) against 1,000 single runs.

Both scenarios enqueue each call (``.delay()``) and execute every run it makes through the
same code a worker runs (``task(...)`` with a pushed request, as ``DurableTestRunner.run_next``
does), on the bench PostgreSQL database, recording every SQL statement (Django's
``execute_wrapper``) and every commit: an explicit COMMIT, or a write statement outside a
transaction (autocommit: the statement is its own transaction). Messages are not published
(``DurableTestRunner`` takes them).

Run with ``BENCH_RESULTS=none`` for the durable tables alone: with a result backend in the
database, each call costs one more write either way (Celery stores each single run's
result; a batch stores the batch's result under each of its calls' ids).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

WRITES = ("INSERT", "UPDATE", "DELETE")


class Counter:
    """Statements, writes and commits on the default connection."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.statements = 0
        self.writes = 0
        self.commits = 0

    def __call__(self, execute, sql, params, many, context):
        self.statements += 1
        write = sql.lstrip().split(" ", 1)[0].upper() in WRITES
        self.writes += write
        if write and self.connection.get_autocommit():
            self.commits += 1  # its own transaction
        return execute(sql, params, many, context)

    def install(self) -> None:
        counter = self
        commit = self.connection._commit

        def _commit():
            counter.commits += 1
            return commit()

        self.connection._commit = _commit

    def per_call(self, calls: int) -> dict[str, float]:
        return {
            "commits": self.commits / calls,
            "writes": self.writes / calls,
            "statements": self.statements / calls,
        }


def execute_run(task, run_id: str, args: list, kwargs: dict) -> None:
    from celery.exceptions import Ignore

    task.push_request(id=run_id, called_directly=False, is_eager=False, retries=0)
    try:
        task(*args, **kwargs)
    except Ignore:
        pass
    finally:
        task.pop_request()


def measure(calls: int, batched: bool) -> dict[str, float]:
    from django.db import connection

    from bench import tasks
    from celery_durable.models import Run
    from celery_durable.states import RunStatus

    counter = Counter(connection)
    counter.install()
    with connection.execute_wrapper(counter):
        if batched:
            for n in range(calls):
                tasks.batch100.delay(n=n)
            for run in Run.objects.filter(task_name="bench.batch100", status=RunStatus.QUEUED):
                execute_run(tasks.batch100, run.id, [], run.kwargs_value)
        else:
            for n in range(calls):
                run_id = tasks.single.delay(n).id
                execute_run(tasks.single, run_id, [n], {})
    name = "bench.batch100" if batched else "bench.single"
    done = Run.objects.filter(task_name=name, status=RunStatus.COMPLETED).count()
    expected = calls // 100 if batched else calls
    if done != expected:
        raise RuntimeError(f"{name}: {done} completed runs, expected {expected}")
    del connection._commit  # back to the class's method
    return {**counter.per_call(calls), "runs": done}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls per scenario (a multiple of 100)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from bench import harness
    from celery_durable.testing import DurableTestRunner

    harness.fresh_tables("celery_durable_batchitem", "celery_durable_step", "celery_durable_run")
    with DurableTestRunner():
        out = {"calls": args.calls, "single": measure(args.calls, False), "batched": measure(args.calls, True)}
    out["check"] = {"batching costs fewer commits per call": out["batched"]["commits"] < out["single"]["commits"]}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
