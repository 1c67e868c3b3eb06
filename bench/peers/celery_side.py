"""Worker-side phases of bench/peers (bench/peers/run.py runs each in a subprocess; one JSON line out).

Every phase starts its own ``celery -A bench.peers.app worker -P prefork`` (harness.Worker
under ``timeout``, own process group, listed in var/bench/peers-worker-pgids, SIGTERM then
SIGKILL of the group and reaped at the end of the phase). The broker's Redis db is flushed
before the worker starts.

``lock``           plain Celery per-key concurrency: N runs of ``bench.peers.locked`` on one
                   key (5 Redis lock slots, ``self.retry(countdown=1)`` when all are taken),
                   enqueued while the worker consumes only an idle queue; ``add_consumer``
                   starts the drain. Rate over the bodies' own stamps (first start to last
                   end, as bench/flow_phases.py's rate over run rows) and over the wall clock.
``sleep-celery``   N pairs (``countdown_start`` → ``countdown_end`` with ``countdown=1``) submitted
                   at once to a warm worker. Lateness = second half's start - its due time.
``sleep-durable``  N durable runs of ``step.sleep("s", 1)`` + one step, submitted at once to a
                   warm worker; the worker's own waker resumes them. Lateness = the sleep
                   step's ``finished_at`` (written when the resumed run passes the sleep) -
                   its ``wake_at`` (the sleep call's clock + 1 s).

Runs/s of the sleep phases = N / (last completion - first submit).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime

IDLE_QUEUE = "bench_peers_idle"
QUEUE = "bench"  # settings.CELERY_TASK_DEFAULT_QUEUE


def _sigterm(*_args) -> None:
    raise SystemExit(143)


def worker(queue: str, concurrency: int, phase: str):
    from bench import harness
    from bench.peers.common import VAR

    host = f"peers-{phase}-{uuid.uuid4().hex[:6]}@localhost"
    w = harness.Worker(queue, host, 900, VAR / f"peers-worker-{phase}.log", concurrency)
    w.cmd[w.cmd.index("bench.celery_app")] = "bench.peers.app"
    return w


class Phase:
    def __init__(self, args: argparse.Namespace) -> None:
        from bench.peers import tasks
        from bench.peers.app import app

        self.args = args
        self.app = app
        self.tasks = tasks
        self.redis = tasks.redis_client()
        self.redis.flushdb()  # before the worker starts: its kombu bindings live in this db
        if app.conf.broker_url.startswith("amqp"):  # RabbitMQ keeps queues: start empty, with x-max-priority
            with app.connection_for_write() as connection:
                for queue in (QUEUE, IDLE_QUEUE):
                    connection.default_channel.queue_delete(queue)
        self.worker = None

    def run(self) -> dict:
        phase = self.args.phase
        queue = IDLE_QUEUE if phase == "lock" else QUEUE
        self.worker = worker(queue, self.args.concurrency, phase)
        self.worker.start()
        try:
            self.worker.wait_ready(self.app)
            out = {"lock": self.lock, "sleep-celery": self.sleep_celery, "sleep-durable": self.sleep_durable}[phase]()
            stats = self.app.control.inspect(destination=[self.worker.hostname], timeout=3).stats() or {}
            out["worker_tasks"] = stats.get(self.worker.hostname, {}).get("total", {})
        finally:
            code = self.worker.stop()
        out["worker_exit"] = code
        out["concurrency"] = self.args.concurrency
        return out

    def wait(self, done, timeout: float, what: str) -> float:
        t0 = time.perf_counter()
        while not done():
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{what}: not done after {timeout:.0f}s")
            time.sleep(0.01)
        return time.perf_counter()

    def cpu_window(self):
        from bench import harness

        return time.perf_counter(), self.worker.cpu(), harness.machine_jiffies()

    def cpu_figures(self, start, n: int) -> dict:
        from bench import harness
        from bench.peers.common import busy_pct

        t0, cpu0, busy0 = start
        return {
            "worker_cpu_ms_per_run": 1000 * (self.worker.cpu() - cpu0) / n,
            "machine_busy_pct": busy_pct(busy0, harness.machine_jiffies()),
            "window_s": time.perf_counter() - t0,
        }

    # --- phases ----------------------------------------------------------------------

    def lock(self) -> dict:
        from bench.peers.common import KEY

        t, n, seconds = self.tasks, self.args.runs, self.args.seconds
        t0 = time.perf_counter()
        for i in range(n):
            t.locked.delay(KEY, i, seconds)
        enqueue_s = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        window = self.cpu_window()
        start = time.perf_counter()
        reply = self.app.control.add_consumer(QUEUE, destination=[self.worker.hostname], reply=True, timeout=5)
        if not reply:
            raise RuntimeError("add_consumer: no reply")
        from bench.tasks import noop

        noop.apply_async(queue=IDLE_QUEUE)  # wakes the worker from its 1 s BRPOP on the idle queue
        end = self.wait(lambda: self.redis.llen(t.LOCK_STAMPS) >= n, max(120.0, n / 5), "lock drain")
        cpu = self.cpu_figures(window, n)
        stamps = [tuple(map(float, s.split())) for s in self.redis.lrange(t.LOCK_STAMPS, 0, -1)]
        first, last = min(s[0] for s in stamps), max(s[1] for s in stamps)
        # Bodies running at once, from the stamps: the limit must hold.
        events = sorted([(s[0], 1) for s in stamps] + [(s[1], -1) for s in stamps], key=lambda e: (e[0], e[1]))
        running = peak = 0
        for _t, d in events:
            running += d
            peak = max(peak, running)
        return {
            "n": len(stamps),
            "body_s": seconds,
            "enqueue_per_s": n / enqueue_s,
            "rate_per_s": len(stamps) / (last - first),
            "wall_rate_per_s": n / (end - start),
            "misses": int(self.redis.get(t.LOCK_MISSES) or 0),
            "peak_running": peak,
            "retry_countdown_s": t.RETRY_COUNTDOWN,
            "load1": load1,
            **cpu,
        }

    def warm(self) -> None:
        from bench import tasks
        from celery_durable.models import Run

        ids = [tasks.durable3.delay(i).id for i in range(10)]
        self.wait(lambda: Run.objects.filter(id__in=ids, status="completed").count() == 10, 60, "warm-up")

    def sleep_celery(self) -> dict:
        t, n = self.tasks, self.args.runs
        self.warm()
        load1 = os.getloadavg()[0]
        window = self.cpu_window()
        first = time.time()
        for i in range(n):
            t.countdown_start.delay(i)
        submitted = time.time() - first
        self.wait(lambda: self.redis.llen(t.SLEEP_STAMPS) >= n, 120 + n / 5, "countdown sleepers")
        cpu = self.cpu_figures(window, n)
        stamps = [tuple(map(float, s.split())) for s in self.redis.lrange(t.SLEEP_STAMPS, 0, -1)]
        lateness = [1000 * (woke - due) for due, woke in stamps]
        return self._sleep_figures(n, first, submitted, lateness, max(w for _d, w in stamps), load1, cpu)

    def sleep_durable(self) -> dict:
        from django.db.models import Count

        from bench.peers.common import summary
        from celery_durable import serialization
        from celery_durable.models import Run, Step

        t, n = self.tasks, self.args.runs
        self.warm()
        load1 = os.getloadavg()[0]
        window = self.cpu_window()
        first = time.time()
        for i in range(n):
            t.sleeper.delay(i)
        submitted = time.time() - first
        runs = Run.objects.filter(task_name=t.sleeper.name)
        self.wait(lambda: runs.filter(status="completed").count() >= n, 120 + n / 5, "durable sleepers")
        cpu = self.cpu_figures(window, n)
        rows = list(
            Step.objects.filter(run__task_name=t.sleeper.name, step_id="s").values_list(
                "output", "finished_at", "run__finished_at", "started_at", "run__published_at"
            )
        )
        due = [serialization.loads(r[0])["wake_at"] for r in rows]
        lateness = [1000 * (r[1] - d).total_seconds() for r, d in zip(rows, due, strict=True)]
        last = max(r[2] for r in rows).timestamp()
        out = self._sleep_figures(n, first, submitted, lateness, last, load1, cpu)
        out["executions"] = dict(runs.values_list("executions").annotate(c=Count("id")))
        # Why runs wake late: first executions (suspensions) slower than the submissions put
        # the resumes behind them in the queue; the waker published some after their wake time.
        out["suspended_per_s"] = n / (max(r[3] for r in rows).timestamp() - first)
        out["published_after_due"] = sum(1 for r, d in zip(rows, due, strict=True) if r[4] > d)
        out["publish_lead_ms"] = summary([1000 * (d - r[4]).total_seconds() for r, d in zip(rows, due, strict=True)])
        return out

    def _sleep_figures(self, n, first, submitted, lateness, last, load1, cpu) -> dict:
        from bench.peers.common import summary

        return {
            "n": n,
            "submit_s": submitted,
            "rate_per_s": n / (last - first),
            "total_s": last - first,
            "lateness_ms": summary(lateness),
            "early": sum(1 for ms in lateness if ms < 0),
            "load1": load1,
            "submitted_at": datetime.fromtimestamp(first, UTC).isoformat(),
            **cpu,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["lock", "sleep-celery", "sleep-durable"], required=True)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=0.0, help="lock: seconds each body takes")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes (prefork)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from bench import harness

    harness.ensure_database()
    if args.phase == "sleep-durable":
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("TRUNCATE celery_durable_step, celery_durable_run CASCADE")
    out = Phase(args).run()
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
