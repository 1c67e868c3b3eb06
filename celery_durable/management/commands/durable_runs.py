"""``manage.py durable_runs list|show|explain|cancel|replay``: inspect and control runs from a shell."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Q, QuerySet

from ... import operations
from ...exceptions import DurableError, RunNotFound
from ...integration import actions
from ...models import Run, Step
from ...states import RunStatus, StepStatus
from ...store import metadata

STATUSES = [s.value for s in RunStatus]


def _statuses(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STATUSES))
    if unknown:
        raise CommandError(f"unknown status {', '.join(unknown)}; statuses are {', '.join(STATUSES)}")
    return chosen


def _meta(value: str) -> tuple[str, str]:
    field, sep, wanted = value.partition("=")
    if not sep or not field.strip():
        raise CommandError(f"--meta takes FIELD=VALUE, got {value!r}")
    return field.strip(), wanted


class Command(BaseCommand):
    """List, show, cancel and replay durable runs."""

    help = "Inspect and control durable runs: list, show, explain, cancel, replay."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{list,show,explain,cancel,replay}")

        listing = sub.add_parser("list", help="runs, newest first")
        listing.add_argument("--status", help="comma-separated statuses (e.g. failed,cancelled)")
        listing.add_argument("--task", help="exact task name")
        listing.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
        listing.add_argument(
            "--meta",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="runs whose step.set_metadata FIELD equals VALUE (repeat for several; all must match)",
        )
        listing.add_argument("--json", action="store_true", help="a JSON array")

        show = sub.add_parser("show", help="one run with its steps")
        show.add_argument("run_id")
        show.add_argument("--json", action="store_true", help="a JSON object {run, steps}")

        explain = sub.add_parser("explain", help="why a run is waiting: the gate that holds it")
        explain.add_argument("run_id")
        explain.add_argument("--json", action="store_true", help="a JSON object {gate, detail, since, ...}")

        for name, helptext in (("cancel", "cancel runs"), ("replay", "replay failed or cancelled runs")):
            command = sub.add_parser(name, help=f"{helptext}: by id, or every run matching --task/--status")
            command.add_argument("run_ids", nargs="*", metavar="RUN_ID")
            command.add_argument("--status", help="with no RUN_ID: comma-separated statuses to select")
            command.add_argument("--task", help="with no RUN_ID: the exact task name to select")
            command.add_argument("--limit", type=int, default=None, help="with no RUN_ID: at most this many runs")
            command.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
            command.add_argument("--json", action="store_true", help="a JSON object {done, skipped, errors}")
            if name == "cancel":
                command.add_argument("--reason", default="", help="recorded on the run")
            else:
                where = command.add_mutually_exclusive_group()
                where.add_argument("--from-step", help="discard this step and every later one, run them again")
                where.add_argument("--from-start", action="store_true", help="run every step again")

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, f"do_{options['action']}")
        try:
            handler(options)
        except DurableError as exc:
            raise CommandError(str(exc)) from exc

    def emit(self, options: dict[str, Any], data: Any, text: str) -> None:
        """Write ``data`` as JSON with ``--json``, else ``text``."""
        self.stdout.write(json.dumps(data, indent=2, default=str) if options["json"] else text)

    # --- list, show and explain -------------------------------------------------------------

    def do_explain(self, options: dict[str, Any]) -> None:
        explanation = actions.explain(options["run_id"])
        lines = [str(explanation)]
        if explanation.holders:
            lines.append("held by: " + ", ".join(explanation.holders))
        self.emit(options, explanation.to_json(), "\n".join(lines))

    def do_list(self, options: dict[str, Any]) -> None:
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        runs = Run.objects.order_by("-created_at", "-pk").only(
            "id",
            "task_name",
            "status",
            "priority",
            "created_at",
            "started_at",
            "finished_at",
            "executions",
            "wake_at",
            "waiting_for",
            "parent",
            "slot_key1",
            "slot_key2",
        )
        if options["status"]:
            runs = runs.filter(status__in=_statuses(options["status"]))
        if options["task"]:
            runs = runs.filter(task_name=options["task"])
        if options["meta"]:
            runs = metadata.matching(runs, [_meta(value) for value in options["meta"]])
        page = list(runs[: options["limit"]])
        counts = {
            row["run_id"]: (row["done"], row["total"])
            for row in Step.objects.filter(run_id__in=[r.pk for r in page])
            .values("run_id")
            .annotate(total=Count("id"), done=Count("id", filter=Q(status=StepStatus.COMPLETED)))
            .order_by()
        }
        data = []
        for run in page:
            item = operations.describe_run(run)
            item["steps_done"], item["steps_recorded"] = counts.get(run.pk, (0, 0))
            data.append(item)
        lines = [f"{'RUN':36}  {'TASK':30}  {'STATUS':9}  {'CREATED':19}  {'DURATION':>9}  STEPS"]
        for item in data:
            seconds = item["duration"]
            lines.append(
                f"{item['id']:36}  {item['task']:30}  {item['status']:9}  {item['created_at'][:19]:19}  "
                f"{'' if seconds is None else f'{seconds:.1f}s':>9}  {item['steps_done']}/{item['steps_recorded']}"
            )
        self.emit(options, data, "\n".join(lines))

    def do_show(self, options: dict[str, Any]) -> None:
        try:
            run = Run.objects.get(pk=options["run_id"])
        except Run.DoesNotExist:
            raise RunNotFound(options["run_id"]) from None
        data: dict[str, Any] = {
            "run": operations.describe_run(run, full=True),
            "steps": operations.describe_steps(run.pk),
        }
        info = data["run"]
        lines = [f"{key:20} {info[key]}" for key in ("id", "task", "status", "created_at", "started_at", "finished_at")]
        if info["concurrency_keys"]:
            lines.append(f"{'concurrency keys':20} {', '.join(info['concurrency_keys'])}")
        lines.append(f"{'args':20} {json.dumps(info['args'], ensure_ascii=False)}")
        lines.append(f"{'kwargs':20} {json.dumps(info['kwargs'], ensure_ascii=False)}")
        if info["wake_at"]:
            lines.append(f"{'wakes at':20} {info['wake_at']}")
        if info["waiting_for"]:
            lines.append(f"{'waiting for':20} {info['waiting_for']}")
        if run.status == RunStatus.COMPLETED:
            lines.append(f"{'result':20} {json.dumps(info['result'], ensure_ascii=False, default=str)[:500]}")
        if info["error"]:
            lines.append(f"{'error':20} {info['error'].get('type')}: {info['error'].get('message')}")
        lines.append("steps:")
        for step in data["steps"]:
            error = f"  {step['error'].get('type')}: {step['error'].get('message')}" if step["error"] else ""
            lines.append(
                f"  {step['step_id']:30} {step['kind']:8} {step['status']:9} "
                f"attempts={step['attempts']} {step['duration']:.3f}s{error}"
            )
        if info["error"] and info["error"].get("traceback"):
            lines.append(info["error"]["traceback"].rstrip())
        self.emit(options, data, "\n".join(lines))

    # --- cancel and replay -------------------------------------------------------------------

    def _selection(self, options: dict[str, Any], default_status: list[str]) -> QuerySet[Run]:
        if options["run_ids"]:
            if options["status"] or options["task"]:
                raise CommandError("give RUN_IDs or --task/--status, not both")
            missing = set(options["run_ids"]) - set(
                Run.objects.filter(pk__in=options["run_ids"]).values_list("pk", flat=True)
            )
            if missing:
                raise CommandError(f"no durable run with id {', '.join(sorted(map(repr, missing)))}")
            return Run.objects.filter(pk__in=options["run_ids"])
        if not (options["status"] or options["task"]):
            raise CommandError("give RUN_IDs, or select runs with --task and/or --status")
        runs = Run.objects.filter(status__in=_statuses(options["status"]) if options["status"] else default_status)
        if options["task"]:
            runs = runs.filter(task_name=options["task"])
        if options["limit"] is not None:
            runs = Run.objects.filter(pk__in=list(runs.order_by("pk").values_list("pk", flat=True)[: options["limit"]]))
        return runs

    def _report(self, options: dict[str, Any], result: operations.BulkResult, verb: str) -> None:
        data = {"done": result.done, "skipped": dict(result.skipped), "errors": result.errors}
        lines = [f"{len(result.done)} run(s) {verb}."]
        if result.skipped_total:
            lines.append(f"skipped {result.skipped_total}: {result.describe_skipped()}")
        lines.extend(f"not changed {run_id}: {error}" for run_id, error in result.errors.items())
        self.emit(options, data, "\n".join(lines))
        if (result.errors or result.skipped_total) and not result.done:
            rule = "unfinished runs" if result.operation == "cancel" else "failed or cancelled runs"
            raise CommandError(f"no run {verb}: only {rule} can be; selected: {result.describe_skipped() or 'none'}")

    def _preview(self, options: dict[str, Any], operation: str, runs: QuerySet[Run]) -> None:
        preview = operations.preview(operation, runs)
        data = {"would_change": preview.eligible, "would_skip": dict(preview.skipped)}
        text = f"would change {preview.eligible} run(s)"
        if preview.skipped_total:
            text += f"; would skip {preview.skipped_total}: {preview.describe_skipped()}"
        self.emit(options, data, text)

    def do_cancel(self, options: dict[str, Any]) -> None:
        runs = self._selection(options, list(operations.CANCELLABLE))
        if options["dry_run"]:
            return self._preview(options, "cancel", runs)
        self._report(options, operations.bulk("cancel", runs, reason=options["reason"]), "cancelled")

    def do_replay(self, options: dict[str, Any]) -> None:
        if options["from_step"]:
            if len(options["run_ids"]) != 1:
                raise CommandError("--from-step needs exactly one RUN_ID (step ids differ between runs)")
            run_id = options["run_ids"][0]
            if options["dry_run"]:
                return self._preview(options, "replay", Run.objects.filter(pk=run_id))
            operations.replay(run_id, from_step=options["from_step"])
            result = operations.BulkResult("replay", done=[run_id])
            return self._report(options, result, f"replayed from step {options['from_step']!r}")
        operation = "replay_from_start" if options["from_start"] else "replay"
        runs = self._selection(options, list(operations.REPLAYABLE))
        if options["dry_run"]:
            return self._preview(options, operation, runs)
        verb = "replayed from the start" if options["from_start"] else "replayed"
        self._report(options, operations.bulk(operation, runs), verb)
