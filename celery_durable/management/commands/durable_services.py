"""``manage.py durable_services``: the waker, sweeper and reaper outside the workers."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections

from ...conf import get_settings
from ...engine.services import next_tick_in
from ...integration.services import BACKSTOP_EVERY, tick


class Command(BaseCommand):
    """Run the durable services in the foreground."""

    help = "Run the durable services (waker, sweeper, reaper) until interrupted."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="run one tick and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        from celery import current_app

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        ticks = 0
        while True:
            full = False
            report = None
            started = time.monotonic()
            try:
                report = tick(current_app, backstops=ticks % BACKSTOP_EVERY == 0)
                ticks += 1
                full = max(report.woken, report.republished, report.recovered) >= get_settings().WAKER_BATCH_SIZE
            except DatabaseError as exc:
                if options["once"]:
                    raise CommandError(f"database error: {exc}") from exc
                self.stderr.write(f"database error, retrying: {exc}")
                connections.close_all()
            else:
                if options["once"] or options["verbosity"] > 1:
                    self.stdout.write(str(report))
            wait = next_tick_in(report, time.monotonic() - started, get_settings().WAKER_INTERVAL)
            if options["once"] or (not full and stop.wait(wait)) or stop.is_set():
                return
