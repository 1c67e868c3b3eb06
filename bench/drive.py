"""One worker subprocess, one settings group, several measurements (``--item``) in order.

Run by ``bench/run.py``, which sets ``BENCH_RESULTS`` / ``BENCH_DB_REUSE`` (the worker and
this driver read the same settings) and repeats it; prints one JSON line on stdout.
The worker always starts on an idle queue. Two modes:

``drain``  the worker consumes an idle queue; N items are enqueued on ``bench``; then
           ``add_consumer('bench')`` plus one wake-up message on the idle queue starts the
           clock, which stops when the queue is empty, nothing is unacked and every result
           (django-celery-results rows, Redis result keys, completed runs) is present.
           Worker start-up is excluded.
``serial`` ``add_consumer('bench')``, a warm-up, then one item at a time: submit ->
           ``AsyncResult.get()`` returned; ``cancel_consumer`` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import uuid

IDLE_QUEUE = "bench_idle"
QUEUE = "bench"
# kombu's Redis transport keeps priority sub-queues next to the base list.
QUEUE_KEYS = [QUEUE, *(f"{QUEUE}\x06\x16{p}" for p in (3, 6, 9))]
TASKS_PER_ITEM = {"plain1": 1, "durable1": 1, "chain3": 3, "durable3": 1}
POLL = 0.01  # seconds between drain checks (one Redis pipeline; PG only once drained)
STATS_SETTLE = 1.5  # seconds: idle backends flush their statistics at most once a second


def _sigterm(*_args) -> None:
    raise SystemExit(143)


class Bench:
    def __init__(self, args) -> None:
        import redis
        from django.conf import settings

        from bench import harness, tasks
        from bench.celery_app import app

        self.args = args
        self.app = app
        self.tasks = tasks
        self.harness = harness
        self.results = settings.RESULTS
        self.broker = redis.Redis.from_url(f"{settings.REDIS_URL}/{settings.BROKER_DB}")
        self.result_store = redis.Redis.from_url(f"{settings.REDIS_URL}/{settings.RESULTS_DB}")
        self.monitor = harness.Monitor()
        self.host = f"bench-{uuid.uuid4().hex[:8]}@localhost"
        harness.VAR.mkdir(parents=True, exist_ok=True)
        self.workload = ""
        self.worker = None
        self.exit_code = None

    # --- helpers ---------------------------------------------------------------------

    def submit(self, i: int):
        from celery import chain

        t = self.tasks
        w = self.workload
        if w == "plain1":
            return t.one.delay(i)
        if w == "durable1":
            return t.durable1.delay(i)
        if w == "chain3":
            return chain(t.one.s(i), t.one.s(), t.one.s()).delay()
        if w == "durable3":
            return t.durable3.delay(i)
        raise ValueError(w)

    def reset(self) -> None:
        self.monitor.execute(
            "TRUNCATE celery_durable_step, celery_durable_run, django_celery_results_taskresult CASCADE"
        )
        self.result_store.flushdb()
        pipe = self.broker.pipeline()
        for key in [*QUEUE_KEYS, IDLE_QUEUE]:
            pipe.delete(key)
        pipe.execute()

    def queue_depth(self) -> int:
        pipe = self.broker.pipeline()
        for key in QUEUE_KEYS:
            pipe.llen(key)
        pipe.hlen("unacked")
        return sum(pipe.execute())

    def expected(self, n: int) -> dict[str, int]:
        tasks = TASKS_PER_ITEM[self.workload] * n + 1  # + the wake-up message
        want = {"runs": n if self.workload.startswith("durable") else 0}
        want["dcr"] = tasks if self.results == "django-db" else 0
        if self.results == "rows":  # DurableResultBackend: plain tasks (and the wake-up) in django-celery-results
            want["dcr"] = 1 if self.workload.startswith("durable") else tasks
        want["redis"] = tasks if self.results == "redis" else 0
        if self.results == "rows-redis":  # DurableResultBackend: plain tasks (and the wake-up) in Redis
            want["redis"] = 1 if self.workload.startswith("durable") else tasks
        return want

    def polls_rows(self) -> bool:
        """``DurableResultBackend`` answers a durable run's ``.get()`` by polling its row."""
        return self.results == "rows-redis" and self.workload.startswith("durable")

    def present(self) -> dict[str, int]:
        runs, dcr = self.monitor.execute(
            "SELECT (SELECT count(*) FROM celery_durable_run WHERE status = 'completed'),"
            " (SELECT count(*) FROM django_celery_results_taskresult)"
        ).fetchone()
        return {"runs": runs, "dcr": dcr, "redis": self.result_store.dbsize()}

    def complete(self, want: dict[str, int]) -> bool:
        have = self.present()
        return all(have[k] >= v for k, v in want.items())

    def control(self, command: str) -> None:
        method = getattr(self.app.control, command)
        reply = method(QUEUE, destination=[self.host], reply=True, timeout=5)
        if not reply:
            raise RuntimeError(f"{command}: no reply from {self.host}")

    # --- measurements ----------------------------------------------------------------

    def drain_rep(self, n: int) -> dict:
        from django.db import connections

        h = self.harness
        self.reset()
        want = self.expected(n)
        load1 = os.getloadavg()[0]
        self.monitor.execute("SELECT pg_stat_force_next_flush()")
        s0 = self.monitor.statements
        before = self.monitor.snapshot()
        t0 = time.perf_counter()
        for i in range(n):
            self.submit(i)
        enqueue_s = time.perf_counter() - t0
        if self.queue_depth() != n:
            raise RuntimeError(f"expected {n} messages on {QUEUE!r}, found {self.queue_depth()}")
        sampler = h.CpuSampler(self.worker, self.monitor)
        start = time.perf_counter()
        self.control("add_consumer")
        self.tasks.noop.apply_async(queue=IDLE_QUEUE)
        deadline = start + self.args.item_timeout
        while True:
            if self.queue_depth() == 0 and self.complete(want):
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not drained: depth {self.queue_depth()}, have {self.present()}, want {want}")
            time.sleep(POLL)
        elapsed = time.perf_counter() - start
        cpu = sampler.finish(n)
        stats = self.app.control.inspect(destination=[self.host], timeout=3).stats() or {}
        worker_total = stats.get(self.host, {}).get("total", {})
        # Counters of a live backend reach pg_stat_* up to 10 s late (PGSTAT_IDLE_INTERVAL);
        # a backend that exits flushes them. So: stop the worker, close our connection, wait
        # until no other session is left in the bench database, flush the monitor's own.
        self.exit_code = self.worker.stop()
        connections.close_all()
        self.monitor.wait_alone()
        self.monitor.execute("SELECT pg_stat_force_next_flush()")
        monitor_xacts = self.monitor.statements - s0  # its own statements in the window
        after = self.monitor.snapshot()
        delta = h.stats_delta(before, after)
        delta["xact_commit"] -= monitor_xacts
        ours = sum(delta[f"{t}_{op}"] for t in ("run", "step") for op in ("ins", "upd", "del"))
        return {
            "n": n,
            "enqueue_per_s": n / enqueue_s,
            "drain_per_s": n / elapsed,
            "elapsed_s": elapsed,
            **cpu,
            "load1": load1,
            "writes_ours": ours / n,
            "run_ins": delta["run_ins"] / n,
            "run_upd": delta["run_upd"] / n,
            "step_ins": delta["step_ins"] / n,
            "step_upd": delta["step_upd"] / n,
            "dcr_writes": (delta["dcr_ins"] + delta["dcr_upd"] + delta["dcr_del"]) / n,
            "commits": delta["xact_commit"] / n,
            "rollbacks": delta["xact_rollback"],
            "sessions": delta["sessions"],
            "sessions_per_item": delta["sessions"] / n,
            "worker_total": worker_total,
        }

    def serial_rep(self, n: int, warmup: int) -> dict:
        self.reset()
        # The polling backends (django-celery-results, a durable run's row) every 2 ms; Redis notifies.
        interval = 0.002 if self.results in ("django-db", "rows") or self.polls_rows() else 0.05
        load1 = os.getloadavg()[0]
        for i in range(warmup):
            self.submit(i).get(timeout=30, interval=interval)
        latencies = []
        sampler = self.harness.CpuSampler(self.worker, self.monitor)
        t0 = time.perf_counter()
        for i in range(n):
            start = time.perf_counter()
            result = self.submit(i).get(timeout=30, interval=interval)
            latencies.append(time.perf_counter() - start)
            if result != i + 3 and self.workload in ("chain3", "durable3"):
                raise RuntimeError(f"wrong result {result!r} for {i}")
        total = time.perf_counter() - t0
        cpu = sampler.finish(n)
        latencies.sort()
        return {
            "n": n,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "mean_ms": 1000 * statistics.fmean(latencies),
            "serial_per_s": n / total,
            **cpu,
            "load1": load1,
        }

    def run(self) -> dict:
        out: dict = {"results": self.results, "db_reuse": os.environ.get("BENCH_DB_REUSE") == "1", "items": []}
        try:
            for number, item in enumerate(self.args.item):
                mode, workload, n = item.split(":")
                self.workload = workload
                self.worker = self.harness.Worker(
                    IDLE_QUEUE, self.host, self.args.limit, self.harness.VAR / f"worker-{self.args.label}-{number}.log"
                )
                self.exit_code = None
                self.worker.start()
                try:
                    self.worker.wait_ready(self.app)
                    if mode == "drain":
                        figures = self.drain_rep(int(n))
                    else:
                        self.control("add_consumer")
                        figures = self.serial_rep(int(n), self.args.warmup)
                        stats = self.app.control.inspect(destination=[self.host], timeout=3).stats() or {}
                        figures["worker_total"] = stats.get(self.host, {}).get("total", {})
                finally:
                    code = self.worker.stop()
                figures["worker_exit"] = code if self.exit_code is None else self.exit_code
                figures["worker_pgid"] = self.worker.pgid
                out["items"].append({"item": item, "mode": mode, "workload": workload, **figures})
        finally:
            self.monitor.close()
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--item",
        action="append",
        required=True,
        metavar="MODE:WORKLOAD:N",
        help=f"drain|serial : {'|'.join(sorted(TASKS_PER_ITEM))} : count (repeatable; run in order)",
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--limit", type=float, default=300, help="seconds before the worker is killed")
    parser.add_argument("--item-timeout", type=float, default=120, help="seconds allowed for one drain")
    parser.add_argument("--label", default="run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from bench import harness

    harness.ensure_database()
    result = Bench(args).run()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
