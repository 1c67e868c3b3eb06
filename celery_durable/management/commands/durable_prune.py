"""``manage.py durable_prune --older-than 30d``: delete finished runs past retention."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import operations
from ...conf import get_settings


class Command(BaseCommand):
    """Delete finished runs (and their steps) that finished longer ago than the retention."""

    help = (
        "Delete completed, failed, cancelled and skipped runs that finished before the cutoff, "
        "with their steps, in batches. Unfinished runs are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            help="age like 30d, 12h, 90m, 2w (default: CELERY_DURABLE['RETENTION_DAYS'] days)",
        )
        parser.add_argument("--batch-size", type=int, default=operations.BATCH_SIZE, help="runs per delete batch")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] is not None:
            try:
                age = operations.parse_age(options["older_than"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        else:
            from datetime import timedelta

            age = timedelta(days=get_settings().RETENTION_DAYS)
        seconds = age.total_seconds()
        shown = f"{seconds / 86400:g} day(s)" if seconds % 86400 == 0 else f"{seconds / 3600:g} hour(s)"
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if options["dry_run"]:
            count = operations.prune(age, dry_run=True)
            self.stdout.write(f"would delete {count} finished run(s) older than {shown}")
            return

        def progress(deleted: int) -> None:
            if options["verbosity"] > 1:
                self.stdout.write(f"deleted {deleted} so far")

        count = operations.prune(age, batch=options["batch_size"], progress=progress)
        self.stdout.write(f"deleted {count} finished run(s) older than {shown}")
