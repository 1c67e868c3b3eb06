"""bench/scale.py's prune phase: ``durable_prune`` deleting 100,000 finished runs; what a partition drop costs."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime

from bench.scale_measure import log, pick, summary

FINISHED = "status IN ('completed', 'failed', 'cancelled')"


class Probe(threading.Thread):
    """During the prune: a small write on a live run every 10 ms, and the oldest open transaction seen."""

    def __init__(self, dsn: dict, run_id: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.run_id = dsn, run_id
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.longest_xact = 0.0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(**self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.01):
                t = time.perf_counter()
                conn.execute("UPDATE celery_durable_run SET published_at = now() WHERE id = %s", [self.run_id])
                self.latencies.append((time.perf_counter() - t) * 1000)
                row = conn.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle' "
                    "AND backend_type = 'client backend'"
                ).fetchone()
                self.longest_xact = max(self.longest_xact, float(row[0]))


class Progress:
    """durable_prune's stdout: the time of each "deleted N so far" line (one per batch)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text
        if "so far" in text:
            self.marks.append((time.perf_counter(), int(text.split()[1])))

    def flush(self) -> None:
        pass


def _wal(cursor) -> int:
    cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
    return int(cursor.fetchone()[0])


def prune(args, info) -> dict:
    from django.core.management import call_command
    from django.db import connection

    from bench import scale_data
    from bench.harness import pg_conninfo

    runs, spacing = info["runs"], 86400 * scale_data.DAYS / info["runs"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT finished_at FROM celery_durable_run WHERE {FINISHED} ORDER BY finished_at OFFSET %s LIMIT 1",
            [args.prune - 1],
        )
        last = cursor.fetchone()[0]
        age = f"{int((datetime.now(UTC) - last).total_seconds())}s"
        cursor.execute(
            "SELECT count(*) FROM celery_durable_step s JOIN celery_durable_run r ON r.id = s.run_id "
            f"WHERE r.{FINISHED} AND r.finished_at <= %s",
            [last],
        )
        steps_before = cursor.fetchone()[0]
        wal0 = _wal(cursor)
    probe = Probe(pg_conninfo(), pick("status = 'queued'", 1)[0])
    probe.start()
    progress = Progress()
    log(f"prune: durable_prune --older-than {age} (~{args.prune} runs, {steps_before} steps)")
    started = time.perf_counter()
    try:
        call_command("durable_prune", "--older-than", age, verbosity=2, stdout=progress)
    finally:
        elapsed = time.perf_counter() - started
        probe.stop.set()
        probe.join()
    with connection.cursor() as cursor:
        wal = _wal(cursor) - wal0
    deleted = int(progress.text.strip().splitlines()[-1].split()[1])
    marks = [started] + [t for t, _n in progress.marks]
    batches = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
    out = {
        "older_than": age,
        "runs_deleted": deleted,
        "steps_deleted": steps_before,
        "seconds": round(elapsed, 2),
        "runs_per_s": round(deleted / elapsed),
        "rows_per_s": round((deleted + steps_before) / elapsed),
        "batches": len(batches),
        "batch_ms": summary(batches),
        "wal_bytes": wal,
        "probe_write_ms": summary(probe.latencies),
        "longest_transaction_s": round(probe.longest_xact, 3),
    }
    log(f"prune: {out}")
    upto = int(runs - (datetime.fromisoformat(info["t0"]) - last).total_seconds() / spacing) + 200
    scale_data.refill(info, min(runs, upto))
    out["drop_same_rows"] = _drop_cost(deleted)
    scale_data.analyze()
    return out


def _drop_cost(count: int) -> dict:
    """What a partition drop would cost: the same number of runs and their steps in tables of their own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE bench_scale_droprun AS SELECT * FROM celery_durable_run WHERE {FINISHED} LIMIT %s", [count]
        )
        cursor.execute(
            "CREATE TABLE bench_scale_dropstep AS SELECT s.* FROM celery_durable_step s "
            "JOIN bench_scale_droprun r ON r.id = s.run_id"
        )
        cursor.execute("ALTER TABLE bench_scale_droprun ADD PRIMARY KEY (id)")
        cursor.execute("CREATE INDEX ON bench_scale_dropstep (run_id, step_id)")
        wal0 = _wal(cursor)
        started = time.perf_counter()
        cursor.execute("DROP TABLE bench_scale_dropstep, bench_scale_droprun")
        elapsed = time.perf_counter() - started
        return {"ms": round(elapsed * 1000, 1), "wal_bytes": _wal(cursor) - wal0}
