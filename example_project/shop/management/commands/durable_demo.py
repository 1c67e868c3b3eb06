"""``manage.py durable_demo``: real workers, real messages, a worker killed mid-run.

What it does, against whatever database and broker the settings name (by default
SQLite and the filesystem transport, nothing to start):

1. wipes the previous demo's rows, messages and marker files;
2. starts a real ``celery -A example_project worker`` subprocess;
3. enqueues two checkouts and a price sync whose supplier times out twice, and waits
   for their results through Celery's result backend;
4. enqueues a fulfilment that SIGKILLs its own worker in the middle of a step, watches
   the worker die, starts a fresh one and waits for the run to resume and complete;
5. on that fresh single-process worker, runs that suspend: a dunning flow that sleeps
   until the billing date and between declined charges (status ``sleeping``), onboarding
   flows that wait for ``user.confirmed`` (status ``waiting``; one resumed by this
   command's ``send_event``, one whose event came early, one that times out), and a video
   pipeline that gathers durable and plain Celery children;
6. starts a second worker and shows per-user concurrency with paid plans first: one
   user's four uploads (``transcode_video``, ``Concurrency(limit=1, key="user_id")``), the
   last one on a paid plan (priority 600), and another user's upload; the paid upload
   starts next, the user's uploads never overlap, the other user is not held up;
7. prints every run's steps and checks, from the database, that no completed step ran
   twice and that the suspended and the concurrency-limited runs behaved; stops the
   workers (always, also on errors and Ctrl-C).
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
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

from celery import current_app
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from django_celery_results.models import TaskResult

from celery_durable import send_event
from celery_durable.models import Event, Run, Slot, Step
from shop import tasks
from shop.models import (
    Account,
    Charge,
    Invoice,
    Order,
    Product,
    Shipment,
    StepExecution,
    StockReservation,
    Video,
)

POLL_SECONDS = 0.1
FINISHED = ("completed", "failed", "cancelled", "skipped")
# Events the demo sends (they are deleted with the demo's runs on the next reset).
DEMO_EVENTS = ("user.confirmed", "invoice.paid")
# Section 3 in seconds instead of days: the billing date comes 5 s after the invoice is
# created, a declined card is retried every 2 s (2 days in shop.tasks), and one sign-up
# expires after 3 s without a confirmation (3 days in shop.tasks).
BILLING_IN = 5.0
RETRY_EVERY = 2.0
CONFIRM_WITHIN = 3.0
# A woken run starts within about WAKER_INTERVAL (0.5 s here) plus the broker's polling.
MAX_LATENESS = 2.0


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
        second = self.start_worker("demo-2")
        self.say("  waiting for the reaper of demo-2 to requeue the run once its lease expires ...")
        self.watch_run(crash.id)
        value = self.get(crash, "fulfil_order")
        run.refresh_from_db()
        self.say(
            f"run {crash.id} resumed and completed {time.monotonic() - crashed_at:.1f}s after the crash "
            f"(executions={run.executions}, recoveries={run.recoveries}) -> {_preview(value, 80)}"
        )

        self.section("3. runs that suspend, all on worker demo-2 (one process: the solo pool)")
        seen = self.suspension(second)

        self.section("4. one transcode per user at a time, paid plans first, on workers demo-2 and demo-3")
        self.start_worker("demo-3")
        uploads = self.per_user_concurrency()

        self.section("5. runs and their steps (from the database)")
        self.show_runs()
        self.section("6. checks")
        self.verify(crash.id, first.pid, alice, bob, mug, tee, seen)
        self.verify_per_user_concurrency(uploads)

    # --- section 3: sleeps, events, child runs ---

    def suspension(self, worker: Worker) -> Seen:
        seen = Seen(worker_pid=worker.pid)

        # A dunning flow: charge on the billing date, retry the declined card "days" later.
        invoice = Invoice.objects.create(
            number="INV-2026-0042",
            email="erin@example.com",
            amount=Decimal("49.00"),
            due_at=timezone.now() + timedelta(seconds=BILLING_IN),
        )
        dunning = tasks.collect_invoice.delay(invoice.pk, declines=2, retry_every_seconds=RETRY_EVERY)
        seen.dunning = dunning.id
        self.say(
            f"enqueued collect_invoice {invoice.number}: due in {BILLING_IN:g}s, the bank declines the card twice, "
            f"retries every {RETRY_EVERY:g}s (2 days in production): run {dunning.id}"
        )
        run = self.wait_for_status(dunning.id, "sleeping")
        seen.dunning_sleeping = run.lease_owner is None and run.wake_at is not None
        seen.broker_backlog = _broker_backlog()
        backlog = "" if seen.broker_backlog is None else f", {seen.broker_backlog} message(s) in the broker queue"
        self.say(
            f"  run is {run.status} until {_clock(run.wake_at)} (step {_pending_step(dunning.id)!r}): "
            f"lease_owner={run.lease_owner}{backlog}; the worker is free for the runs below"
        )

        # Onboarding: three sign-ups wait for their user.confirmed event.
        bob, carol, dave = (Account.objects.create(email=f"{name}@example.com") for name in ("bob", "carol", "dave"))
        waiting = tasks.onboard_user.delay(bob.pk)
        self.say(f"enqueued onboard_user {bob.email} (confirm within 3 days): run {waiting.id}")
        expiring = tasks.onboard_user.delay(carol.pk, confirm_within_seconds=CONFIRM_WITHIN)
        self.say(
            f"enqueued onboard_user {carol.email} (confirm within {CONFIRM_WITHIN:g}s; she never will): "
            f"run {expiring.id}"
        )
        with transaction.atomic():  # the run's message leaves at commit: the event is first
            early = tasks.onboard_user.delay(dave.pk)
            dave_event = send_event("user.confirmed", {"account_id": dave.pk})
        self.say(
            f"enqueued onboard_user {dave.email} and sent his user.confirmed in the same transaction, "
            f"before his run even started: run {early.id}"
        )
        seen.onboarding = {"bob": waiting.id, "carol": expiring.id, "dave": early.id}
        seen.accounts = {"bob": bob.pk, "carol": carol.pk, "dave": dave.pk}
        run = self.wait_for_status(waiting.id, "waiting")
        seen.bob_waiting = run.lease_owner is None and run.waiting_for == "user.confirmed"
        self.say(
            f"  {bob.email}'s run is {run.status} for {run.waiting_for!r} matching "
            f'{{"account_id": {bob.pk}}} (timeout at {_clock(run.wake_at)}), lease_owner={run.lease_owner}'
        )
        bob_event = send_event("user.confirmed", {"account_id": bob.pk, "via": "email link"})
        seen.events = {"bob": bob_event.id, "dave": dave_event.id}
        self.say(
            f'send_event("user.confirmed", {{"account_id": {bob.pk}, "via": "email link"}}) from this command '
            f"-> event {bob_event.id}; run {waiting.id} is now {Run.objects.get(id=waiting.id).status}"
        )
        for label, result in ((bob.email, waiting), (dave.email, early)):
            self.say(f"onboard_user {label} -> {_preview(self.get(result, f'onboard_user {label}'), 90)}")

        # A video pipeline: gather three durable transcodes and a plain Celery thumbnail task.
        video = Video.objects.create(title="Durable execution in five minutes", duration_seconds=300)
        seen.video = video.pk
        pipeline = tasks.publish_video.delay(video.pk, encoder_busy_once=True)
        seen.pipeline = pipeline.id
        self.say(f"enqueued publish_video #{video.pk} (the 1080p encoder is busy once): run {pipeline.id}")
        run = self.wait_for_status(pipeline.id, "waiting")
        children = Run.objects.filter(parent_id=pipeline.id).order_by("child_index")
        seen.pipeline_waiting = run.lease_owner is None and run.waiting_for is None
        self.say(
            f"  run is {run.status} for its children ({run.children_pending} of {children.count()} unfinished): "
            + ", ".join(f"{c.task_name}({_arguments(c)}) [{'durable' if c.durable else 'plain'}]" for c in children)
        )
        value = self.get(pipeline, "publish_video")
        self.say(f"publish_video -> {_preview(value, 110)}")
        done = [c for c in children.order_by("finished_at")]
        seen.finish_order = [_child_label(c) for c in done]
        self.say(f"  children finished in the order {seen.finish_order}; step.gather returned them in the order asked")

        value = self.get(expiring, f"onboard_user {carol.email}")
        self.say(f"onboard_user {carol.email} -> {_preview(value, 90)} (nobody confirmed: the wait timed out)")

        self.say(f"watching collect_invoice {invoice.number} sleep and wake:")
        self.watch_sleeps(dunning.id)
        value = self.get(dunning, "collect_invoice")
        self.say(f"collect_invoice {invoice.number} -> {_preview(value, 100)}")
        for sid, wake_at, woke in _sleeps(dunning.id):
            self.say(
                f"  {sid:13} due {_clock(wake_at)}, woke {_clock(woke)} (+{(woke - wake_at).total_seconds():.2f}s)"
            )

        # Its step.send_event("invoice.paid") started the on_event task notify_accounting.
        found: list[str] = []

        def started() -> bool:
            found.extend(Run.objects.filter(task_name="shop.notify_accounting").values_list("id", flat=True))
            return bool(found)

        self.poll_until("invoice.paid to start notify_accounting", started, 30)
        value = self.get(current_app.AsyncResult(found[0]), "notify_accounting")
        self.say(f"invoice.paid started notify_accounting (on_event): run {found[0]} -> {_preview(value, 90)}")
        return seen

    # --- section 4: per-user concurrency and priority ---

    def per_user_concurrency(self) -> Uploads:
        """Erin uploads three videos on the free plan, then upgrades and uploads a fourth; Frank uploads one."""
        erin, frank = ERIN, FRANK
        videos = [
            Video.objects.create(title=f"{name} #{n}", duration_seconds=60)
            for name, n in (("erin", 1), ("erin", 2), ("erin", 3), ("frank", 1), ("erin", 4))
        ]
        plans = ["free", "free", "free", "free", "pro"]
        users = [erin, erin, erin, frank, erin]
        labels = ["erin #1 (free)", "erin #2 (free)", "erin #3 (free)", "frank #1 (free)", "erin #4 (pro)"]
        # One transaction: every run is admitted (or backlogged) before any message leaves at
        # the commit, so what this command reads below is not racing the workers.
        with transaction.atomic():
            results = [
                tasks.transcode_video.delay(video.pk, user, plan)
                for video, user, plan in zip(videos, users, plans, strict=True)
            ]
            admitted = {r.id: r.status for r in Run.objects.filter(id__in=[r.id for r in results])}
            slots = dict(Slot.objects.filter(key__startswith="shop.transcode_video:").values_list("key", "in_use"))
        uploads = Uploads(runs=dict(zip(labels, (r.id for r in results), strict=True)))
        uploads.admitted = {label: admitted[run_id] for label, run_id in uploads.runs.items()}
        uploads.slots_in_use = slots
        for label, result in zip(labels, results, strict=True):
            self.say(f"enqueued transcode_video {label}: run {result.id} is {uploads.admitted[label]}")
        self.say(
            "  slots in use: "
            + ", ".join(f"{key} {in_use}/1" for key, in_use in sorted(slots.items()))
            + "; the pending runs wait in the database, not in the broker"
        )
        for label, result in zip(labels, results, strict=True):
            self.get(result, f"transcode_video {label}")
        t0 = min(Run.objects.filter(id__in=uploads.runs.values()).values_list("started_at", flat=True))
        runs = {r.id: r for r in Run.objects.filter(id__in=uploads.runs.values())}
        pids = dict(
            StepExecution.objects.filter(run_id__in=uploads.runs.values(), step="encode_upload").values_list(
                "run_id", "pid"
            )
        )
        by_start = sorted(uploads.runs.items(), key=lambda item: runs[item[1]].started_at)
        self.say("started and finished (from the runs' started_at / finished_at):")
        for label, run_id in by_start:
            run = runs[run_id]
            self.say(
                f"  {label:16} priority {run.priority:3}  started +{(run.started_at - t0).total_seconds():.2f}s  "
                f"finished +{(run.finished_at - t0).total_seconds():.2f}s  in pid {pids.get(run_id)}"
            )
        uploads.erin_order = [label for label, _ in by_start if label.startswith("erin")]
        self.say(f"erin's uploads started in the order {uploads.erin_order}")
        return uploads

    def verify_per_user_concurrency(self, uploads: Uploads) -> None:
        failures = 0

        def check(ok: bool, message: str) -> None:
            nonlocal failures
            failures += not ok
            line = f"  {'ok  ' if ok else 'FAIL'}  {message}"
            self.stdout.write(self.style.SUCCESS(line) if ok else self.style.ERROR(line))

        runs = {label: Run.objects.get(id=run_id) for label, run_id in uploads.runs.items()}
        erin = sorted((run for label, run in runs.items() if label.startswith("erin")), key=lambda r: r.started_at)
        statuses = [uploads.admitted[label] for label in runs]
        check(
            statuses == ["queued", "pending", "pending", "queued", "pending"]
            and uploads.slots_in_use
            == {f"shop.transcode_video:user_id:{ERIN}": 1, f"shop.transcode_video:user_id:{FRANK}": 1},
            f"at enqueue: erin's first upload and frank's took their user's slot (queued), erin's other three "
            f"waited in the backlog: {statuses}",
        )
        overlaps = [f"{a.id} and {b.id}" for a, b in pairwise(erin) if b.started_at < a.finished_at]
        check(
            all(r.status == "completed" for r in runs.values()) and not overlaps,
            f"erin's {len(erin)} uploads ran one at a time across two workers: each started after the one "
            f"before it finished ({'overlaps: ' + ', '.join(overlaps) if overlaps else 'no overlap'})",
        )
        expected = ["erin #1 (free)", "erin #4 (pro)", "erin #2 (free)", "erin #3 (free)"]
        check(
            uploads.erin_order == expected and runs["erin #4 (pro)"].priority == 600,
            f"the paid upload (priority 600), enqueued last, started next after the running one: {uploads.erin_order}",
        )
        check(
            runs["frank #1 (free)"].started_at < runs["erin #4 (pro)"].started_at,
            "frank's upload was not held up by erin's backlog (another key): it started before erin's second",
        )
        in_use = list(Slot.objects.filter(key__startswith="shop.transcode_video:").values_list("in_use", flat=True))
        check(in_use and not any(in_use), f"every slot was handed back: in use {in_use}")
        if failures:
            raise CommandError(f"{failures} check(s) failed")

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
        Event.objects.filter(name__in=DEMO_EVENTS).delete()
        # Slot counters of the demo's concurrency keys: an interrupted demo may have left one in use.
        Slot.objects.filter(key__startswith="shop.").delete()
        for model in (StepExecution, Shipment, StockReservation, Charge, Order, Product, Invoice, Account, Video):
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

    def wait_for_status(self, run_id: str, status: str) -> Run:
        """Poll the run until it has ``status``; fail if it finishes first."""
        found: list[Run] = []

        def reached() -> bool:
            run = Run.objects.get(id=run_id)
            if run.status == status:
                found.append(run)
                return True
            if run.status in FINISHED:
                raise CommandError(f"run {run_id} is {run.status}; expected to see it {status}")
            return False

        self.poll_until(f"run {run_id} to be {status}", reached, 30)
        return found[0]

    def watch_sleeps(self, run_id: str) -> None:
        """Print a sleeping run's transitions (status, and the sleep it is in) until it finishes."""
        last: tuple[str, str | None] | None = None

        def finished() -> bool:
            nonlocal last
            run = Run.objects.only("status", "wake_at", "executions").get(id=run_id)
            pending = _pending_step(run_id) if run.status == "sleeping" else None
            if (run.status, pending) != last:
                last = (run.status, pending)
                until = f" until {_clock(run.wake_at)} (step {pending!r})" if pending else ""
                if run.status == "queued":
                    until = " (due within WAKER_INTERVAL: the waker published it with a short countdown)"
                self.say(f"  run is {run.status}{until}, executions={run.executions}")
            return run.status in FINISHED

        self.poll_until(f"run {run_id} to finish", finished, 45)

    # --- report ---

    def show_runs(self) -> None:
        executions: dict[tuple[str, str], list[int]] = defaultdict(list)
        for run_id, name, pid in StepExecution.objects.order_by("id").values_list("run_id", "step", "pid"):
            executions[(run_id, name)].append(pid)
        runs = Run.objects.filter(task_name__startswith="shop.", parent__isnull=True).order_by("created_at")
        for run in runs:
            duration = (run.finished_at - run.created_at).total_seconds() if run.finished_at else 0.0
            self.stdout.write("")
            arguments = _arguments(run)
            arguments = arguments if len(arguments) <= 80 else arguments[:79] + "…"
            self.stdout.write(self.style.HTTP_INFO(f"{run.task_name}({arguments})"))
            self.stdout.write(
                f"  run {run.id}  {run.status}  executions={run.executions}  "
                f"recoveries={run.recoveries}  {duration:.2f}s"
            )
            rows = [("step", "kind", "status", "attempts", "body ran", "in pid", "output")]
            for item in Step.objects.filter(run_id=run.id).order_by("id"):
                pids = executions.get((run.id, item.step_id), [])
                rows.append((
                    item.step_id, item.kind, item.status, str(item.attempts),
                    f"{len(pids)}x" if item.kind == "run" else "-",
                    ",".join(str(p) for p in dict.fromkeys(pids)), _preview(item.output_value, 60),
                ))  # fmt: skip
            for line in _table(rows):
                self.stdout.write(f"  {line}")
            children = list(Run.objects.filter(parent_id=run.id).order_by("parent_step", "child_index"))
            if children:
                self.stdout.write(f"  child runs of step {children[0].parent_step!r}:")
                rows = [("#", "task", "kind", "status", "executions", "finished", "steps", "result")]
                for child in children:
                    steps = Step.objects.filter(run_id=child.id).order_by("id")
                    finished = (child.finished_at - run.created_at).total_seconds() if child.finished_at else 0.0
                    rows.append((
                        str(child.child_index), child.task_name, "durable" if child.durable else "plain",
                        child.status, str(child.executions), f"+{finished:.2f}s",
                        ", ".join(f"{s.step_id} x{s.attempts}" for s in steps) or "-",
                        _preview(child.result_value, 50),
                    ))  # fmt: skip
                for line in _table(rows):
                    self.stdout.write(f"    {line}")

    def verify(
        self, crash_id: str, killed_pid: int, alice: Order, bob: Order, mug: Product, tee: Product, seen: Seen
    ) -> None:
        failures = 0

        def check(ok: bool, message: str) -> None:
            nonlocal failures
            failures += not ok
            line = f"  {'ok  ' if ok else 'FAIL'}  {message}"
            self.stdout.write(self.style.SUCCESS(line) if ok else self.style.ERROR(line))

        runs = list(Run.objects.filter(task_name__startswith="shop."))
        check(all(r.status == "completed" for r in runs), f"all {len(runs)} runs completed (child runs included)")

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
        completed = Step.objects.filter(status="completed", kind="run").values_list("run_id", "step_id", "attempts")
        mismatched = [
            f"{run_id}/{step_id}: ran {counts[(run_id, step_id)]}x, {attempts} attempt(s)"
            for run_id, step_id, attempts in completed
            if counts[(run_id, step_id)] != attempts + ((run_id, step_id) == (crash_id, "pack_parcel"))
        ]
        check(not mismatched, "no completed step ran more often than its attempts: "
              + ("; ".join(mismatched) or f"{len(completed)} steps checked"))  # fmt: skip

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
        order_charges = {c.charge_id: c for c in Charge.objects.exclude(idempotency_key__startswith=seen.dunning)}
        check(
            len(order_charges) == 2 and {alice.charge_id, bob.charge_id} == set(order_charges),
            f"one card charge per order, keyed by step.idempotency_key: "
            f"{', '.join(f'{i} {c.amount} {c.currency}' for i, c in order_charges.items())}",
        )
        check(
            alice.status == "shipped" and bob.status == "paid",
            f"order #{alice.pk} is {alice.status} ({alice.tracking_number}), order #{bob.pk} is {bob.status}",
        )
        self.verify_suspension(seen, check)
        mails = Counter(_mail_subjects(Path(settings.EMAIL_FILE_PATH)))
        expected = {
            f"Your receipt for order #{alice.pk}": 1,
            f"Your receipt for order #{bob.pk}": 1,
            "Confirm your e-mail address": 3,
            "Welcome to the shop!": 2,
            "Receipt for invoice INV-2026-0042": 1,
            "Invoice INV-2026-0042 paid: 49.00": 1,
        }
        check(
            mails == expected,
            f"{sum(mails.values())} e-mails sent, each once: 2 order receipts, 3 confirmation requests, "
            f"2 welcomes, 1 invoice receipt, 1 note to accounting (files in {settings.EMAIL_FILE_PATH})",
        )
        if mails != expected:
            self.stdout.write(f"        sent: {dict(mails)}")
        if failures:
            raise CommandError(f"{failures} check(s) failed")

    def verify_suspension(self, seen: Seen, check: Callable[[bool, str], None]) -> None:
        # The dunning flow: durable sleeps.
        dunning = Run.objects.get(id=seen.dunning)
        sleeps = _sleeps(seen.dunning)
        late = [(woke - wake_at).total_seconds() for _, wake_at, woke in sleeps]
        waker_interval = settings.CELERY_DURABLE["WAKER_INTERVAL"]
        check(
            seen.dunning_sleeping and seen.broker_backlog in (0, None),
            "the dunning run slept in the database: status sleeping, no lease"
            + ("" if seen.broker_backlog is None else ", no message in the broker"),
        )
        check(
            len(late) == 3 and all(0 <= s < MAX_LATENESS for s in late),
            f"it woke {len(late)} times, never early and at most {MAX_LATENESS:g}s late: "
            f"{', '.join(f'+{s:.2f}s' for s in late)} (WAKER_INTERVAL={waker_interval})",
        )
        attempts = list(
            Step.objects.filter(run_id=seen.dunning, step_id__startswith="charge_invoice")
            .order_by("id")
            .values_list("step_id", "output")
        )
        outcomes = [json.loads(output)["status"] for _, output in attempts]
        invoice = Invoice.objects.get()
        charges = Charge.objects.filter(idempotency_key__startswith=seen.dunning)
        check(
            outcomes == ["declined", "declined", "succeeded"]
            and charges.count() == 1
            and invoice.status == "paid"
            and invoice.charge_id == charges[0].charge_id,
            f"charge attempts {[sid for sid, _ in attempts]}: {outcomes}; one charge "
            f"({invoice.charge_id}), invoice {invoice.status}",
        )
        paid = list(Event.objects.filter(name="invoice.paid"))
        accounting = list(Run.objects.filter(task_name="shop.notify_accounting"))
        statuses = ", ".join(r.status for r in accounting) or "-"
        check(
            len(paid) == 1
            and paid[0].event_id == f"{seen.dunning}:announce-payment"
            and len(accounting) == 1
            and accounting[0].status == "completed",
            f"step.send_event sent invoice.paid once ({len(paid)} event), and its on_event task "
            f"notify_accounting ran once ({len(accounting)} run, {statuses})",
        )
        check(
            dunning.executions == 4, f"each sleep ended the execution: 1 + 3 wake-ups = {dunning.executions} executions"
        )

        # Onboarding: waits for events.
        accounts = {name: Account.objects.get(pk=pk) for name, pk in seen.accounts.items()}
        results = {name: Run.objects.get(id=run_id).result_value for name, run_id in seen.onboarding.items()}
        check(
            seen.bob_waiting and accounts["bob"].status == "active" and results["bob"]["event"] == seen.events["bob"],
            f"{accounts['bob'].email}: waiting with no lease until this command's send_event resumed it: "
            f"{accounts['bob'].status}",
        )
        check(
            accounts["dave"].status == "active" and results["dave"]["event"] == seen.events["dave"],
            f"{accounts['dave'].email}: his event, sent before his run reached the wait, was not lost: "
            f"{accounts['dave'].status}",
        )
        carol = Run.objects.get(id=seen.onboarding["carol"])
        wait = Step.objects.get(run_id=carol.id, step_id="confirmation")
        waited = (wait.finished_at - wait.started_at).total_seconds()
        check(
            accounts["carol"].status == "expired" and wait.finished_at >= wait.output_value["timeout_at"],
            f"{accounts['carol'].email}: no matching event, the wait timed out after {waited:.2f}s "
            f"(asked {CONFIRM_WITHIN:g}s): {accounts['carol'].status}",
        )

        # The video pipeline: child runs.
        pipeline = Run.objects.get(id=seen.pipeline)
        children = list(Run.objects.filter(parent_id=seen.pipeline).order_by("child_index"))
        kinds = Counter("durable" if c.durable else "plain" for c in children)
        check(
            seen.pipeline_waiting and pipeline.executions == 2,
            f"publish_video waited for {len(children)} children ({kinds['durable']} durable, {kinds['plain']} "
            f"plain Celery) without a lease and resumed once (executions={pipeline.executions})",
        )
        gathered = Step.objects.get(run_id=seen.pipeline, step_id="transcode").output_value["results"]
        asked = [_child_label(c) for c in children]
        returned = [r.get("resolution", "thumbnail") for r in gathered]
        check(
            returned == asked and seen.finish_order != asked,
            f"step.gather returned {returned}, the order asked, though they finished as {seen.finish_order}",
        )
        video = Video.objects.get(pk=seen.video)
        check(
            video.status == "published" and [r["resolution"] for r in video.renditions] == list(tasks.RESOLUTIONS),
            f"video {video.status} with {len(video.renditions)} renditions and {video.thumbnail_url}",
        )

        # One single-process worker ran every run of section 3, the suspended ones included.
        section = [seen.dunning, seen.pipeline, *seen.onboarding.values(), *(c.id for c in children)]
        section += [r.id for r in Run.objects.filter(task_name="shop.notify_accounting")]
        pids = set(StepExecution.objects.filter(run_id__in=section).values_list("pid", flat=True))
        check(
            pids == {seen.worker_pid},
            f"{len(section)} runs of section 3 shared one single-process worker (pid {seen.worker_pid}): "
            f"sleeping and waiting runs hold no worker",
        )

    def show_worker_logs(self) -> None:
        for worker in self.workers.started:
            self.stderr.write(f"--- last lines of {worker.log_path} ---\n{worker.log_tail()}")

    # --- output ---

    def say(self, message: str) -> None:
        self.stdout.write(f"[{time.monotonic() - self.t0:5.1f}s] {message}")

    def section(self, title: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(title))


ERIN, FRANK = 7, 8  # user ids of section 4


@dataclass
class Uploads:
    """Section 4's runs by label, and what was seen when they were enqueued."""

    runs: dict[str, str]
    admitted: dict[str, str] = field(default_factory=dict)
    slots_in_use: dict[str, int] = field(default_factory=dict)
    erin_order: list[str] = field(default_factory=list)


@dataclass
class Seen:
    """What section 3 observed while its runs were suspended (checked in section 5)."""

    worker_pid: int
    dunning: str = ""
    dunning_sleeping: bool = False
    broker_backlog: int | None = None
    onboarding: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, int] = field(default_factory=dict)
    events: dict[str, str] = field(default_factory=dict)
    bob_waiting: bool = False
    pipeline: str = ""
    pipeline_waiting: bool = False
    video: int = 0
    finish_order: list[str] = field(default_factory=list)


def _arguments(run: Run) -> str:
    return ", ".join(
        [json.dumps(a, default=str) for a in run.args_value]
        + [f"{k}={json.dumps(v, default=str)}" for k, v in run.kwargs_value.items()]
    )


def _child_label(child: Run) -> str:
    return str(child.args_value[1]) if child.task_name == "shop.transcode" else "thumbnail"


def _pending_step(run_id: str) -> str | None:
    return Step.objects.filter(run_id=run_id, status="pending").values_list("step_id", flat=True).first()


def _sleeps(run_id: str) -> list[tuple[str, datetime, datetime]]:
    """A run's completed sleeps: (step id, when it was due, when the resumed run passed it)."""
    steps = Step.objects.filter(run_id=run_id, kind="sleep", status="completed").order_by("id")
    return [(s.step_id, s.output_value["wake_at"], s.finished_at) for s in steps]


def _clock(when: datetime | None) -> str:
    """``when`` as a time of day, with the date too when it is not today."""
    if when is None:
        return "-"
    local = timezone.localtime(when)
    today = local.date() == timezone.localdate()
    return local.strftime("%H:%M:%S.%f")[:-3] if today else local.strftime("%Y-%m-%d %H:%M:%S")


def _broker_backlog() -> int | None:
    """Messages waiting in the filesystem transport's queue folder (``None`` for other brokers)."""
    conf = current_app.conf
    if not conf.broker_url.startswith("filesystem://"):
        return None
    return sum(1 for _ in Path(conf.broker_transport_options["data_folder_in"]).glob("*.msg"))


def _mail_subjects(folder: Path) -> Iterator[str]:
    """The subject of every e-mail the file-based backend wrote."""
    for path in sorted(folder.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Subject: "):
                yield line.removeprefix("Subject: ")


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
