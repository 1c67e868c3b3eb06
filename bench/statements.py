"""Statements per execution start, per new step and per replayed step, counted in-process.

Drives ``bench.probe3`` (3 steps) through the same code a worker runs (``task(...)`` with a
pushed request, as ``celery_durable.testing.DurableTestRunner.run_next`` does) on the bench
PostgreSQL database, recording every SQL statement with Django's ``execute_wrapper`` and
every transaction (BEGIN when autocommit is switched off, COMMIT, ROLLBACK) by wrapping
the connection. Messages are not published (``DurableTestRunner`` takes them).

Scenarios: a fresh run (enqueue + first execution), and a re-execution after a simulated
crash after step two (the lease expired, step three not written): steps one and two are
replayed, step three runs. Also times N fresh 3-step executions in-process (no Celery
worker, no broker) for the library's own cost per run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import timedelta


class Recorder:
    """Every statement and transaction boundary on the default connection, tagged with a phase."""

    def __init__(self) -> None:
        self.phase = "-"
        self.events: list[tuple[str, str]] = []

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def __call__(self, execute, sql, params, many, context):
        self.events.append((self.phase, " ".join(sql.split())))
        return execute(sql, params, many, context)

    def install(self, connection) -> None:
        """Wrap the connection's transaction methods (Django calls them on ``atomic`` enter/exit)."""
        recorder = self
        set_autocommit = connection._set_autocommit
        commit = connection._commit
        rollback = connection._rollback

        def _set_autocommit(autocommit):
            if not autocommit:
                # psycopg sends BEGIN before the next statement: one more round trip.
                recorder.events.append((recorder.phase, "BEGIN"))
            return set_autocommit(autocommit)

        def _commit():
            recorder.events.append((recorder.phase, "COMMIT"))
            return commit()

        def _rollback():
            recorder.events.append((recorder.phase, "ROLLBACK"))
            return rollback()

        connection._set_autocommit = _set_autocommit
        connection._commit = _commit
        connection._rollback = _rollback

    def by_phase(self) -> dict[str, list[str]]:
        phases: dict[str, list[str]] = {}
        for phase, sql in self.events:
            phases.setdefault(phase, []).append(sql)
        return phases


class PhaseTimer:
    """CPU time of this thread (``time.thread_time``) per phase."""

    def __init__(self) -> None:
        self.phase = "-"
        self.since = time.thread_time()
        self.totals: dict[str, float] = {}

    def set_phase(self, phase: str) -> None:
        now = time.thread_time()
        self.totals[self.phase] = self.totals.get(self.phase, 0.0) + now - self.since
        self.phase, self.since = phase, now


_WRITES_IN_CTE = re.compile(r"\b(INSERT INTO|UPDATE|DELETE FROM)\b", re.IGNORECASE)


def _kind(sql: str) -> str:
    """The statement's first keyword; a ``WITH`` whose CTEs write (PostgreSQL) counts as an ``UPDATE``."""
    kind = sql.split(" ", 1)[0].upper()
    return "UPDATE" if kind == "WITH" and _WRITES_IN_CTE.search(sql) else kind


def _summary(statements: list[str]) -> dict:
    kinds = [_kind(s) for s in statements]
    sql = [s for s in kinds if s not in ("BEGIN", "COMMIT", "ROLLBACK")]
    return {
        "statements": len(sql),
        "writes": sum(k in ("INSERT", "UPDATE", "DELETE") for k in sql),
        "reads": sum(k == "SELECT" for k in sql),
        "transactions": kinds.count("BEGIN"),
        "round_trips": len(kinds),
        "sql": [s[:160] for s in statements],
    }


def execute_run(task, run_id: str, args: list) -> None:
    from celery.exceptions import Ignore

    task.push_request(id=run_id, called_directly=False, is_eager=False, retries=0)
    try:
        task(*args)
    except Ignore:
        pass
    finally:
        task.pop_request()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timed", type=int, default=300, help="fresh runs to time in-process")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from django.db import connection

    from bench import harness, tasks
    from celery_durable.models import Run, Step
    from celery_durable.testing import DurableTestRunner

    try:
        from celery_durable.states import RunStatus
    except ImportError:  # a --snapshot from before the layered core (issue 11)
        from celery_durable.models import RunStatus  # type: ignore[attr-defined,no-redef]

    harness.ensure_database()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE celery_durable_step, celery_durable_run CASCADE")
    probe = tasks.probe3
    out: dict = {}
    with DurableTestRunner() as runner:
        # Warm-up: first connection, first queries.
        warm = probe.delay(0)
        execute_run(probe, warm.id, [0])

        recorder = Recorder()
        recorder.install(connection)
        tasks.MARK_HOOK = recorder.set_phase
        with connection.execute_wrapper(recorder):
            recorder.set_phase("enqueue")
            run_id = probe.delay(1).id
            recorder.set_phase("start")
            execute_run(probe, run_id, [1])
            recorder.set_phase("-")
        fresh = recorder.by_phase()
        if Run.objects.get(id=run_id).result != "4":
            raise RuntimeError("probe run did not complete with 4")

        # Crash after step two: lease expired, step three never written.
        Step.objects.filter(run_id=run_id, step_id="three").delete()
        Run.objects.filter(id=run_id).update(
            status=RunStatus.RUNNING, lease_expires_at=runner.clock.now() - timedelta(seconds=1), result=None
        )
        recorder = Recorder()
        recorder.install(connection)
        tasks.MARK_HOOK = recorder.set_phase
        with connection.execute_wrapper(recorder):
            recorder.set_phase("start")
            execute_run(probe, run_id, [1])
            recorder.set_phase("-")
        replay = recorder.by_phase()
        tasks.MARK_HOOK = None
        if Run.objects.get(id=run_id).result != "4":
            raise RuntimeError("re-executed probe run did not complete with 4")

        out["fresh"] = {phase: _summary(stmts) for phase, stmts in fresh.items() if phase != "-"}
        out["replay"] = {phase: _summary(stmts) for phase, stmts in replay.items() if phase != "-"}
        for phases in (out["fresh"], out["replay"]):  # a phase that wrote nothing has no statements
            for phase in ("step one", "step two", "step three", "finish"):
                phases.setdefault(phase, _summary([]))

        # In-process cost of the library: enqueue + execute N fresh 3-step runs, sequentially.
        enqueue, execute = [], []
        timer = PhaseTimer()
        tasks.MARK_HOOK = timer.set_phase
        for i in range(args.timed):
            t0 = time.perf_counter()
            timer.set_phase("enqueue")
            rid = probe.delay(i).id
            timer.set_phase("start")
            t1 = time.perf_counter()
            execute_run(probe, rid, [i])
            timer.set_phase("-")
            t2 = time.perf_counter()
            enqueue.append(t1 - t0)
            execute.append(t2 - t1)
        tasks.MARK_HOOK = None
        out["timed"] = {
            "cpu_ms": {k: 1000 * v / args.timed for k, v in timer.totals.items() if k != "-"},
            "n": args.timed,
            "enqueue_p50_ms": 1000 * statistics.median(enqueue),
            "execute_p50_ms": 1000 * statistics.median(execute),
            "execute_mean_ms": 1000 * statistics.fmean(execute),
        }
    out["checks"] = checks(out)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        out["server_version"] = cursor.fetchone()[0]
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


def checks(out: dict) -> dict[str, bool]:
    """Each new step's checkpoint is one INSERT with no read before it, written at the next
    step's boundary; the last one is written with the completion, in one transaction."""
    empty = _summary([])
    fresh, replay = out["fresh"], out["replay"]
    result = {
        "new step one: nothing written yet (deferred to step two's boundary)": fresh.get("step one", empty)[
            "round_trips"
        ]
        == 0
    }
    for phase in ("step two", "step three"):
        s = fresh.get(phase, empty)
        result[f"new {phase}: exactly one write (the step before's INSERT), no read, no explicit transaction"] = (
            s["round_trips"] == 1 and s["writes"] == 1 and s["sql"][0].startswith("INSERT")
        )
    for label, phases in (("fresh", fresh), ("replay", replay)):
        s = phases.get("finish", empty)
        one_statement = s["round_trips"] == 1 and s["sql"][0].startswith("WITH")  # PostgreSQL's writable CTE
        one_transaction = s["transactions"] == 1 and s["writes"] == 2 and s["reads"] == 0
        result[f"{label} finish: the last checkpoint and the completion, one commit"] = one_statement or one_transaction
    for phase in ("step one", "step two", "step three"):
        result[f"replayed or deferred {phase}: zero statements"] = replay.get(phase, empty)["round_trips"] == 0
    return result


if __name__ == "__main__":
    sys.exit(main())
