"""``manage.py durable_demo``: real workers, real messages, a worker killed mid-run.

What it does, against whatever database and broker the settings name (by default
SQLite and the filesystem transport, nothing to start):

1. wipes the previous demo's rows, messages and marker files;
2. starts a real ``celery -A example_project worker`` subprocess;
3. enqueues two checkouts and a price sync whose supplier times out twice, and waits
   for their results through Celery's result backend;
4. enqueues a fulfilment that SIGKILLs its own worker in the middle of a step, watches
   the worker die, starts a fresh one and waits for the run to resume and complete;
5. prints every run's steps and checks, from the database, that no completed step ran
   twice; stops the workers (always, also on errors and Ctrl-C).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from celery import current_app
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from django_celery_results.models import TaskResult

from celery_durable.models import Run, Step
from shop import tasks
from shop.models import Charge, Order, Product, Shipment, StepExecution, StockReservation

POLL_SECONDS = 0.1


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: stop the workers and leave (not caught as an Exception)."""


# --- worker subprocesses ----------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux only: the worker gets SIGKILL if this command dies without cleaning up."""
    if sys.platform.startswith("linux"):
        with suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    """One ``celery worker`` subprocess, in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    reaped: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.reaped = True
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL after ``grace`` seconds; always reaped."""
        if not self.reaped and self.process.poll() is None:
            # The worker leads its own process group (start_new_session): signal the group,
            # so pool children, if any, go too. The group id cannot be reused before we reap.
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self.process.wait()
        self.reaped = True
        self.log_file.close()

    def _signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


@dataclass
class Workers:
    """Starts workers and guarantees they are stopped."""

    log_dir: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, name: str) -> Worker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        command = [
            sys.executable, "-m", "celery", "-A", "example_project", "worker",
            # solo: the task runs in the worker process itself, so the crash demo's
            # SIGKILL takes the whole worker down (with prefork only a child would die).
            "-P", "solo", "-n", f"{name}@%h", "-l", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # DJANGO_SETTINGS_MODULE is set by manage.py
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us; we stop the workers
            preexec_fn=_die_with_parent,  # safe: this process starts no threads
        )
        worker = Worker(name, process, log_path, log_file)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


# --- the command ------------------------------------------------------------------------


class Command(BaseCommand):
    help = "Run the celery-durable demo: real workers, a worker killed mid-run, a resumed run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout", type=float, default=120.0, help="give up after this many seconds (default 120)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options["timeout"]
        self.workers = Workers(Path(settings.VAR_DIR) / "logs")
        with _signals_interrupt():
            try:
                self.demo()
            except Interrupted as exc:
                self.stderr.write(f"\n{exc}: stopping the workers")
                raise CommandError("demo interrupted", returncode=130) from None
            except CommandError:
                self.show_worker_logs()
                raise
            finally:
                with _signals_ignored():
                    self.workers.stop_all()
                stopped = ", ".join(
                    f"{w.name} (pid {w.pid}, exit {w.process.returncode})" for w in self.workers.started
                )
                self.say(f"workers stopped and reaped: {stopped or 'none'}")
        self.say(self.style.SUCCESS(f"demo passed in {time.monotonic() - self.t0:.1f}s"))

    # --- the story ---

    def demo(self) -> None:
        self.header()
        self.reset()
        mug, tee = self.seed_products()
        alice = Order.objects.create(email="alice@example.com", product=mug, quantity=2)
        bob = Order.objects.create(email="bob@example.com", product=tee, quantity=1)

        self.section("1. checkouts and a flaky supplier API, on worker demo-1")
        first = self.start_worker("demo-1")
        results = [
            (f"checkout order #{alice.pk}", tasks.checkout.delay(alice.pk)),
            (f"checkout order #{bob.pk}", tasks.checkout.delay(bob.pk)),
            ("sync_supplier_price MUG-01 (times out twice)", tasks.sync_supplier_price.delay("MUG-01", fail_times=2)),
        ]
        for label, result in results:
            self.say(f"enqueued {label}: run {result.id}")
        for label, result in results:
            value = self.get(result, label)
            self.say(f"{label} -> {_preview(value, 90)}")

        self.section("2. a worker killed in the middle of a run")
        crash = tasks.fulfil_order.delay(alice.pk, crash_once=True)
        self.say(f"enqueued fulfil_order order #{alice.pk} (kills its worker once): run {crash.id}")
        code = self.wait_for_exit(first, crash.id)
        run = Run.objects.get(id=crash.id)
        done = list(Step.objects.filter(run_id=crash.id).order_by("id").values_list("step_id", flat=True))
        self.say(
            f"worker demo-1 (pid {first.pid}) died: exit code {code} "
            f"({'SIGKILL' if code == -signal.SIGKILL else 'unexpected'})"
        )
        if code != -signal.SIGKILL:
            raise CommandError(f"expected worker demo-1 to be killed by SIGKILL (exit -9), it exited with {code}")
        self.say(
            f"  run {crash.id} is {run.status!r}, checkpointed steps: {done}, lease expires in "
            f"{_seconds_until(run.lease_expires_at):.1f}s and nobody renews it"
        )
        crashed_at = time.monotonic()
        self.start_worker("demo-2")
        self.say("  waiting for the reaper of demo-2 to requeue the run once its lease expires ...")
        self.watch_run(crash.id)
        value = self.get(crash, "fulfil_order")
        run.refresh_from_db()
        self.say(
            f"run {crash.id} resumed and completed {time.monotonic() - crashed_at:.1f}s after the crash "
            f"(executions={run.executions}, recoveries={run.recoveries}) -> {_preview(value, 80)}"
        )

        self.section("3. runs and their steps (from the database)")
        self.show_runs()
        self.section("4. checks")
        self.verify(crash.id, first.pid, alice, bob, mug, tee)

    def header(self) -> None:
        db = settings.DATABASES["default"]
        conf = current_app.conf
        broker = conf.broker_url
        if broker.startswith("filesystem://"):
            broker += f"  (folder {conf.broker_transport_options['data_folder_in']})"
        self.stdout.write(self.style.MIGRATE_HEADING("celery-durable demo"))
        self.stdout.write(f"  database : {db['ENGINE'].rsplit('.', 1)[-1]}  {db['NAME']}")
        self.stdout.write(f"  broker   : {broker}")
        self.stdout.write(f"  results  : {conf.result_backend}")
        self.stdout.write(f"  durable  : {settings.CELERY_DURABLE}")
        self.stdout.write(f"  logs     : {self.workers.log_dir}")

    def reset(self) -> None:
        """Forget the previous demo: its runs, results, shop rows, messages and markers."""
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError("the database is not migrated: run `python manage.py migrate` first")
        run_ids = list(Run.objects.filter(task_name__startswith="shop.").values_list("id", flat=True))
        TaskResult.objects.filter(task_id__in=run_ids).delete()
        Run.objects.filter(id__in=run_ids).delete()
        for model in (StepExecution, Shipment, StockReservation, Charge, Order, Product):
            model.objects.all().delete()
        purged = current_app.control.purge()
        for folder in (Path(settings.SHOP_CRASH_MARKER_DIR), Path(settings.EMAIL_FILE_PATH)):
            shutil.rmtree(folder, ignore_errors=True)
        self.say(f"reset: removed {len(run_ids)} old runs and {purged or 0} queued messages")

    def seed_products(self) -> tuple[Product, Product]:
        mug = Product.objects.create(sku="MUG-01", name="Celery mug", price=Decimal("19.99"), stock=10)
        tee = Product.objects.create(sku="TEE-01", name="Durable T-shirt", price=Decimal("25.00"), stock=5)
        return mug, tee

    # --- waiting, always against the deadline ---

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CommandError(f"timed out after {time.monotonic() - self.t0:.0f}s (--timeout)")
        return left

    def poll_until(self, what: str, done: Callable[[], bool], limit: float) -> None:
        give_up = min(time.monotonic() + limit, self.deadline)
        while not done():
            if time.monotonic() >= give_up:
                raise CommandError(f"timed out waiting for {what}")
            time.sleep(POLL_SECONDS)

    def start_worker(self, name: str) -> Worker:
        worker = self.workers.start(name)
        self.say(f"starting worker {name}: pid {worker.pid}, log {worker.log_path.name}")

        def ready() -> bool:
            if worker.exit_code() is not None:
                raise CommandError(f"worker {name} exited with {worker.exit_code()} while starting")
            return " ready." in worker.log_path.read_text(errors="replace")

        self.poll_until(f"worker {name} to start", ready, 30)
        self.say(f"worker {name} is ready")
        return worker

    def get(self, result: AsyncResult, label: str) -> Any:
        """The run's final value through Celery's result backend (``AsyncResult.get``)."""
        try:
            return result.get(timeout=min(45.0, self.remaining()), interval=0.2)
        except CeleryTimeoutError as exc:
            run = Run.objects.filter(id=result.id).first()
            raise CommandError(f"{label}: no result in time (run status: {run and run.status})") from exc
        except Exception as exc:
            raise CommandError(f"{label} failed: {type(exc).__name__}: {exc}") from exc

    def wait_for_exit(self, worker: Worker, run_id: str) -> int:
        def exited() -> bool:
            if Run.objects.filter(id=run_id, status="completed").exists():
                raise CommandError(f"run {run_id} completed without killing its worker")
            return worker.exit_code() is not None

        self.poll_until(f"worker {worker.name} to be killed by the crash demo", exited, 30)
        code = worker.exit_code()
        assert code is not None
        return code

    def watch_run(self, run_id: str) -> None:
        """Print the run's status transitions until it finishes (polling the Run row)."""
        last: tuple[str, int] | None = None

        def finished() -> bool:
            nonlocal last
            run = Run.objects.only("status", "recoveries", "executions").get(id=run_id)
            state = (run.status, run.executions)
            if state != last:
                last = state
                self.say(f"  run is {run.status} (executions={run.executions}, recoveries={run.recoveries})")
            return run.status in ("completed", "failed", "cancelled", "skipped")

        self.poll_until(f"run {run_id} to resume", finished, 45)

    # --- report ---

    def show_runs(self) -> None:
        executions: dict[tuple[str, str], list[int]] = defaultdict(list)
        for run_id, name, pid in StepExecution.objects.order_by("id").values_list("run_id", "step", "pid"):
            executions[(run_id, name)].append(pid)
        for run in Run.objects.filter(task_name__startswith="shop.").order_by("created_at"):
            duration = (run.finished_at - run.created_at).total_seconds() if run.finished_at else 0.0
            arguments = ", ".join(
                [json.dumps(a) for a in run.args_value] + [f"{k}={json.dumps(v)}" for k, v in run.kwargs_value.items()]
            )
            self.stdout.write("")
            self.stdout.write(self.style.HTTP_INFO(f"{run.task_name}({arguments})"))
            self.stdout.write(
                f"  run {run.id}  {run.status}  executions={run.executions}  "
                f"recoveries={run.recoveries}  {duration:.2f}s"
            )
            rows = [("step", "status", "attempts", "body ran", "in pid", "output")]
            for item in Step.objects.filter(run_id=run.id).order_by("id"):
                pids = executions.get((run.id, item.step_id), [])
                rows.append((
                    item.step_id, item.status, str(item.attempts), f"{len(pids)}x",
                    ",".join(str(p) for p in dict.fromkeys(pids)), _preview(item.output_value, 60),
                ))  # fmt: skip
            for line in _table(rows):
                self.stdout.write(f"  {line}")

    def verify(self, crash_id: str, killed_pid: int, alice: Order, bob: Order, mug: Product, tee: Product) -> None:
        failures = 0

        def check(ok: bool, message: str) -> None:
            nonlocal failures
            failures += not ok
            line = f"  {'ok  ' if ok else 'FAIL'}  {message}"
            self.stdout.write(self.style.SUCCESS(line) if ok else self.style.ERROR(line))

        runs = list(Run.objects.filter(task_name__startswith="shop."))
        check(all(r.status == "completed" for r in runs), f"all {len(runs)} runs completed")

        crash = Run.objects.get(id=crash_id)
        body = Counter(StepExecution.objects.filter(run_id=crash_id).values_list("step", flat=True))
        pids = dict(StepExecution.objects.filter(run_id=crash_id).order_by("id").values_list("step", "pid"))
        check(crash.executions == 2 and crash.recoveries == 1,
              f"the crashed run was resumed once by a fresh worker (executions={crash.executions}, "
              f"recoveries={crash.recoveries})")  # fmt: skip
        check(body["pick_items"] == 1,
              f"pick_items, checkpointed before the crash, ran once (in the killed worker, pid {killed_pid}) "
              f"and was not run again: {body['pick_items']}x")  # fmt: skip
        check(body["pack_parcel"] == 2 and pids.get("pack_parcel") != killed_pid,
              f"pack_parcel, interrupted by the crash (no checkpoint), ran again on the fresh worker: "
              f"{body['pack_parcel']}x (at-least-once for a step that never finished)")  # fmt: skip
        check(body["book_courier"] == 1 and Shipment.objects.filter(order=alice).count() == 1,
              f"book_courier ran once, after the resume; {Shipment.objects.count()} shipment booked")  # fmt: skip

        # Every completed step body ran exactly as often as its recorded attempts (the one
        # interrupted by the crash ran once more: its first execution never finished).
        counts = Counter(StepExecution.objects.values_list("run_id", "step"))
        mismatched = [
            f"{run_id}/{step_id}: ran {counts[(run_id, step_id)]}x, {attempts} attempt(s)"
            for run_id, step_id, attempts in Step.objects.filter(status="completed").values_list(
                "run_id", "step_id", "attempts"
            )
            if counts[(run_id, step_id)] != attempts + ((run_id, step_id) == (crash_id, "pack_parcel"))
        ]
        check(not mismatched, "no completed step ran more often than its attempts: "
              + ("; ".join(mismatched) or f"{Step.objects.count()} steps checked"))  # fmt: skip

        flaky = Step.objects.get(run__task_name="shop.sync_supplier_price", step_id="fetch_price")
        loads = StepExecution.objects.filter(step="load_product").count()
        check(flaky.attempts == 3 and loads == 1,
              f"fetch_price timed out twice and succeeded on attempt {flaky.attempts}; "
              f"load_product before it ran {loads}x")  # fmt: skip

        for obj in (mug, tee, alice, bob):
            obj.refresh_from_db()
        check(
            mug.stock == 8 and tee.stock == 4 and StockReservation.objects.count() == 2,
            f"stock taken exactly once per order (atomic step): MUG-01 10 -> {mug.stock}, TEE-01 5 -> {tee.stock}",
        )
        charges = {c.charge_id: c for c in Charge.objects.all()}
        check(
            len(charges) == 2 and {alice.charge_id, bob.charge_id} == set(charges),
            f"one card charge per order, keyed by step.idempotency_key: "
            f"{', '.join(f'{i} {c.amount} {c.currency}' for i, c in charges.items())}",
        )
        mails = sorted(Path(settings.EMAIL_FILE_PATH).glob("*.log"))
        check(len(mails) == 2, f"{len(mails)} receipts e-mailed (files in {settings.EMAIL_FILE_PATH})")
        check(
            alice.status == "shipped" and bob.status == "paid",
            f"order #{alice.pk} is {alice.status} ({alice.tracking_number}), order #{bob.pk} is {bob.status}",
        )
        if failures:
            raise CommandError(f"{failures} check(s) failed")

    def show_worker_logs(self) -> None:
        for worker in self.workers.started:
            self.stderr.write(f"--- last lines of {worker.log_path} ---\n{worker.log_tail()}")

    # --- output ---

    def say(self, message: str) -> None:
        self.stdout.write(f"[{time.monotonic() - self.t0:5.1f}s] {message}")

    def section(self, title: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(title))


def _preview(value: Any, width: int) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds_until(when: datetime | None) -> float:
    return (when - timezone.now()).total_seconds() if when else 0.0


def _table(rows: list[tuple[str, ...]]) -> Iterator[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` so the workers get stopped."""

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(f"got {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While the workers are being stopped, a second Ctrl-C must not abandon them."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
