"""``manage.py durable_check_deploy``: check that the runs in flight replay on the code deployed now."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...engine.deploycheck import check_deploy
from ...integration.registry import CeleryRegistry

CAUSES = {
    "nondeterminism": "a recorded step is reached as another kind of step (NonDeterminismError)",
    "step-not-reached": "a recorded step is no longer reached (removed, renamed or reordered)",
    "task-removed": "the task is no longer registered as a durable task",
    "error": "the code outside steps raises on the recorded values",
}


class Command(BaseCommand):
    """Replay every unfinished run's recorded history against this code; exit 1 if any would fail."""

    help = (
        "Replay the recorded steps of every unfinished run (sleeping, waiting, queued again, retrying) "
        "against the code as deployed in this process, without running a step body or writing anything, "
        "and list the runs that would fail, grouped by task and cause. Exit status 1 if any would fail."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--task", action="append", help="only runs of this task (repeatable)")
        parser.add_argument("--json", action="store_true", help="a JSON object {ok, checked, failed, groups}")
        parser.add_argument("--limit", type=int, default=20, help="runs listed per group (default 20; all in JSON)")

    def handle(self, *args: Any, **options: Any) -> None:
        report = check_deploy(CeleryRegistry(), options["task"])
        if options["json"]:
            self.stdout.write(json.dumps(report.to_json(), indent=2, default=str))
        else:
            self._print(report, max(options["limit"], 0))
        if not report.ok:
            sys.exit(1)

    def _print(self, report: Any, limit: int) -> None:
        if report.ok:
            self.stdout.write(f"ok: all {report.checked} unfinished run(s) replay on this code")
            return
        self.stdout.write(f"{len(report.failures)} of {report.checked} unfinished run(s) would fail on this code:")
        for (task, cause), verdicts in report.grouped().items():
            self.stdout.write(f"\n{task}: {cause}, {len(verdicts)} run(s): {CAUSES.get(cause, cause)}")
            for verdict in verdicts[:limit]:
                self.stdout.write(f"  {verdict.run_id}  {verdict.detail}")
            if len(verdicts) > limit:
                self.stdout.write(f"  ... and {len(verdicts) - limit} more (--json lists them all)")
