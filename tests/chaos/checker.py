"""The chaos checker: SPEC §10's guarantees, verified from the database after a chaos run.

Ground truth is what step bodies and the harness wrote (tests/testapp/models.py): one
``ChaosAttempt`` per start of a step body (pid, database-clock start and end), a
``ChaosCounter`` per (run, step), a ``ChaosClaim`` per execution that claimed a run, and a
``ChaosFault`` per injected fault with the processes it hit. A plain step body may run more
than once when the execution running it was interrupted (killed, frozen, cut off, its
connection or the database dropped) after the body started and before its checkpoint
committed: such an extra attempt is *explained* only by a fault that hit that attempt's
process during its execution. Anything else is a violation, reported with the run's id.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery_durable.models import BatchItem, Event, Run, Slot, Step
from celery_durable.states import FINISHED as FINISHED_STATUSES
from celery_durable.states import RunStatus
from tests.testapp.chaos_tasks import CHILDREN, EVENT, LIMIT
from tests.testapp.models import ChaosAttempt, ChaosClaim, ChaosCounter, ChaosFault

TASKS = (
    "chaos.pipeline",
    "chaos.waiter",
    "chaos.parent",
    "chaos.child",
    "chaos.limited",
    "chaos.cancellable",
    "chaos.batched",
)
EVERYONE = "*"


@dataclass
class Report:
    runs: int = 0
    completed: int = 0
    cancelled: int = 0
    lost: int = 0  # called but not recorded, or never reached a terminal status
    bodies: int = 0  # step bodies started
    duplicated: int = 0  # extra starts of plain bodies, each explained by a fault
    explained_by: dict[str, int] = field(default_factory=dict)  # those extra starts per fault kind
    completed_after_cancel: int = 0  # cancel requested as the last step finished: the run ended
    limit_violations: int = 0
    peak: dict[str, int] = field(default_factory=dict)  # most runs of a key executing at once
    violations: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.violations.append(message)

    def assert_ok(self, context: str = "") -> None:
        """Raise with the violations (and ``context``, e.g. why unfinished runs are stuck)."""
        if self.violations:
            shown = "\n  ".join(self.violations[:50])
            more = f"\n  ... and {len(self.violations) - 50} more" if len(self.violations) > 50 else ""
            tail = f"\n{context}" if context else ""
            raise AssertionError(f"chaos checker: {len(self.violations)} violation(s):\n  {shown}{more}{tail}")


@dataclass
class Fault:
    kind: str
    at: datetime
    until: datetime
    pids: set[int] | str

    def hits(self, pid: int) -> bool:
        return self.pids == EVERYONE or pid in self.pids


def load_faults() -> list[Fault]:
    faults = []
    for row in ChaosFault.objects.order_by("at"):
        pids = json.loads(row.pids)
        faults.append(Fault(row.kind, row.at, row.until or row.at, pids if pids == EVERYONE else set(pids)))
    return faults


def check(
    called: list[str] | None = None,
    lease_seconds: float = 5.0,
    overrides: dict[str, list[int]] | None = None,
    batched: list[str] | None = None,
) -> Report:
    """Check every chaos run in the database; ``called``: ids the workload got from ``.delay()``.

    ``overrides``: the limits a workload set with ``set_limit`` during the run, per key value
    of ``chaos.limited``. ``batched``: the call ids of ``chaos.batched`` calls (each must be
    in exactly one batch run).
    """
    report = Report()
    runs = {r.id: r for r in Run.objects.filter(task_name__in=TASKS)}
    report.runs = len(runs)
    steps: dict[str, dict[str, Step]] = defaultdict(dict)
    for s in Step.objects.filter(run_id__in=list(runs)):
        steps[s.run_id][s.step_id] = s
    attempts: dict[str, list[ChaosAttempt]] = defaultdict(list)
    for a in ChaosAttempt.objects.order_by("started", "id"):
        attempts[a.run_id].append(a)
    report.bodies = sum(len(v) for v in attempts.values())
    claims: dict[str, list[ChaosClaim]] = defaultdict(list)
    for c in ChaosClaim.objects.order_by("at", "id"):
        claims[c.run_id].append(c)
    counters = {(c.run_id, c.step): c.count for c in ChaosCounter.objects.all()}
    faults = load_faults()
    slack = timedelta(seconds=lease_seconds)

    def explained(a: ChaosAttempt, superseded_at: datetime | None) -> Fault | None:
        """A fault that hit ``a``'s process while its execution was alive, before it was superseded."""
        mine = [c.at for c in claims[a.run_id] if c.pid == a.pid and c.at <= a.started]
        # The execution began at its claim; without a claim row (a fault dropped it), one lease earlier.
        began = mine[-1] if mine else a.started - slack
        last = superseded_at or datetime.max.replace(tzinfo=a.started.tzinfo)
        for fault in faults:
            if fault.hits(a.pid) and fault.until >= began and fault.at <= last:
                return fault
        return None

    def story(a: ChaosAttempt, tries: list[ChaosAttempt]) -> str:
        """What a violation's reader needs: every attempt, the claims of the run, the faults near it."""
        moment = "%H:%M:%S.%f"
        shown = ", ".join(
            f"#{t.n} pid {t.pid} {t.started:{moment}}-{f'{t.ended:{moment}}' if t.ended else '?'}" for t in tries
        )
        taken = ", ".join(f"execution {c.execution} pid {c.pid} at {c.at:{moment}}" for c in claims[a.run_id])
        window = timedelta(seconds=3 * lease_seconds)
        near = ", ".join(
            f"{f.kind} {f.at:{moment}}-{f.until:{moment}} pids {'*' if f.pids == EVERYONE else sorted(f.pids)}"
            for f in faults
            if f.at - window <= a.started <= f.until + window
        )
        return f"; attempts [{shown}]; claims [{taken}]; faults near [{near}]"

    for run_id in called or []:
        if run_id not in runs:
            report.lost += 1
            report.fail(f"run {run_id}: .delay() returned it but no run row exists (lost)")
    for run in runs.values():
        _check_run(run, steps[run.id], attempts[run.id], counters, explained, report, story)
    _check_limits(runs, attempts, explained, report, _limits_in_force(overrides or {}))
    _check_events(runs, steps, report)
    _check_children(runs, report)
    _check_batches(batched or [], runs, report)
    leaked = Run.objects.filter(task_name="chaos.limited", holds_slots=True).values_list("id", flat=True)
    for run_id in leaked:
        report.fail(f"run {run_id} (chaos.limited): finished but still holds its concurrency slot")
    for key, in_use in Slot.objects.filter(key__startswith="chaos.limited:").values_list("key", "in_use"):
        if in_use:
            report.fail(f"slot {key}: {in_use} in use after every run finished")
    return report


def _expected(run: Run) -> Any:
    args = run.args_value
    if run.task_name == "chaos.parent":
        return [args[0] * 10 + i for i in range(CHILDREN + 1)]
    if run.task_name == "chaos.child":
        return args[0] * 10 + args[1]
    if run.task_name == "chaos.limited":
        return args[1]
    if run.task_name == "chaos.batched":
        return sorted(item["n"] for item in run.kwargs_value["items"])
    return args[0]


def _check_batches(batched: list[str], runs: dict[str, Run], report: Report) -> None:
    """No batched call lost or duplicated: each call row is in one batch run, which executes exactly its calls."""
    items = {item.id: item for item in BatchItem.objects.filter(task_name="chaos.batched")}
    for call_id in batched:
        if call_id not in items:
            report.lost += 1
            report.fail(f"batched call {call_id}: .delay() returned it but no call row exists (lost)")
    calls_of: dict[str, list[int]] = defaultdict(list)
    for item in items.values():
        if item.run_id is None:
            report.lost += 1
            report.fail(f"batched call {item.id}: never joined a batch")
        elif item.run_id not in runs:
            report.fail(f"batched call {item.id}: its batch run {item.run_id} does not exist")
        else:
            calls_of[item.run_id].append(item.arguments_value["n"])
    executed: dict[int, list[str]] = defaultdict(list)
    for run in runs.values():
        if run.task_name != "chaos.batched":
            continue
        given = sorted(item["n"] for item in run.kwargs_value["items"])
        if given != sorted(calls_of.get(run.id, [])):
            rows = calls_of.get(run.id)
            report.fail(f"run {run.id} (chaos.batched): executes calls {given}, its call rows are {rows}")
        for n in given:
            executed[n].append(run.id)
    for n, run_ids in executed.items():
        if len(run_ids) > 1:
            report.fail(f"batched call n={n}: in {len(run_ids)} batch runs {run_ids} (duplicated)")


def _check_run(run, steps, attempts, counters, explained, report: Report, story=lambda a, tries: "") -> None:
    name = f"run {run.id} ({run.task_name}{tuple(run.args_value)})"
    if run.status not in FINISHED_STATUSES:
        report.lost += 1
        report.fail(f"{name}: stuck in status {run.status!r} (lease {run.lease_expires_at}, wake {run.wake_at})")
        return
    if run.status == RunStatus.CANCELLED:
        report.cancelled += 1
        if run.cancel_requested_at is None and not (run.parent_id and run.task_name == "chaos.child"):
            report.fail(f"{name}: cancelled but nobody asked")
    elif run.status == RunStatus.COMPLETED:
        report.completed += 1
        if run.cancel_requested_at is not None:
            report.completed_after_cancel += 1
        if run.task_name != "chaos.waiter" and run.result_value != _expected(run):
            report.fail(f"{name}: completed with {run.result_value!r}, expected {_expected(run)!r}")
    else:
        report.fail(f"{name}: ended {run.status}: {(run.error_value or {}).get('message')}")
    if run.cancel_requested_at is not None or run.status == RunStatus.CANCELLED:
        for a in attempts:
            if a.started > run.finished_at and not explained(a, None):
                report.fail(f"{name}: step {a.step!r} started at {a.started} after the run stopped")
        for s in steps.values():
            if s.finished_at > run.finished_at:
                report.fail(f"{name}: step {s.step_id!r} checkpointed at {s.finished_at} after the run stopped")

    by_step: dict[str, list[ChaosAttempt]] = defaultdict(list)
    for a in attempts:
        by_step[a.step].append(a)
    for step_id, tries in by_step.items():
        if counters.get((run.id, step_id)) != len(tries):
            report.fail(f"{name}: step {step_id!r} counter {counters.get((run.id, step_id))} != {len(tries)} attempts")
    for step_id, s in steps.items():
        if s.kind == "sleep" and s.status == "completed" and s.finished_at < s.output_value["wake_at"]:
            report.fail(f"{name}: sleep {step_id!r} ended at {s.finished_at}, before {s.output_value['wake_at']}")
    for step_id, tries in by_step.items():
        checkpoint = steps.get(step_id)
        done = checkpoint is not None and checkpoint.status == "completed"
        if tries[0].atomic:
            # Exactly once, always: a rolled-back attempt leaves no row, a committed one its checkpoint.
            if len(tries) != (1 if done else 0) or (done and checkpoint.output_value["n"] != 1):
                report.fail(f"{name}: atomic step {step_id!r} committed {len(tries)} times (checkpoint: {done})")
            continue
        if not done:
            continue
        winner = checkpoint.output_value["n"]
        if winner not in {a.n for a in tries}:
            report.fail(f"{name}: step {step_id!r} output names attempt {winner}, which never started")
        later = {a.n: b.started for a, b in itertools.pairwise(tries)}
        for a in tries:
            if a.n == winner:
                continue
            report.duplicated += 1
            cause = explained(a, later.get(a.n, checkpoint.finished_at))
            if cause is not None:
                report.explained_by[cause.kind] = report.explained_by.get(cause.kind, 0) + 1
            else:
                report.fail(
                    f"{name}: step {step_id!r} body ran {len(tries)} times; attempt {a.n} (pid {a.pid}, "
                    f"started {a.started}) lost to attempt {winner} with no fault hitting its process" + story(a, tries)
                )
    for s_id in steps:
        if steps[s_id].kind == "run" and steps[s_id].status == "completed" and s_id not in by_step:
            report.fail(f"{name}: step {s_id!r} has a checkpoint but its body never ran")
    # One execution at a time (SPEC §10.3): a body that starts while an earlier one of the same
    # run is still going means two executions; the earlier one must have been cut off by a fault.
    for a, b in itertools.pairwise(attempts):
        if a.ended is not None and b.started < a.ended and explained(a, b.started) is None:
            report.fail(f"{name}: bodies {a.step!r} (pid {a.pid}) and {b.step!r} (pid {b.pid}) ran at once")


def _limits_in_force(overrides: dict[str, list[int]]) -> dict[str, int]:
    """Per slot key, the highest limit in force at any time: the declared LIMIT or an override.

    No limit exceeded under overrides: lowering a limit stops no running run, so the bound
    over the whole run is the largest of them (the overrides the workload set, and the one
    still on the key's row).
    """
    applied = {key: list(limits) for key, limits in overrides.items()}
    prefix = "chaos.limited:key:"  # the slot key of chaos.limited's key value (set_limit(limited, value, n))
    rows = Slot.objects.filter(key__startswith=prefix, override__isnull=False).values_list("key", "override")
    for key, override in rows:
        applied.setdefault(key.removeprefix(prefix), []).append(override)
    return {key: max([LIMIT, *limits]) for key, limits in applied.items()}


def _check_limits(runs, attempts, explained, report: Report, limits: dict[str, int]) -> None:
    """At most LIMIT runs of a key execute at any instant (SPEC §10.4), from the bodies' intervals.

    A key given overrides may reach the highest of them (``_limits_in_force``).

    An attempt killed inside its body has no end: it counts until the run's next attempt
    starts (its run keeps the slot until then), or until the run ended. An attempt still going
    when the next attempt of its run started (a frozen or cut-off execution, fenced) counts
    until that start: the run is one run, in one slot.
    """
    per_key: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for run_id, tries in attempts.items():
        keyed = [a for a in tries if a.key is not None]
        if not keyed:
            continue
        for a, following in zip(keyed, [*keyed[1:], None], strict=True):
            end = a.ended
            if following is not None and (end is None or end > following.started):
                end = following.started
            if end is None:
                end = runs[run_id].finished_at if run_id in runs else None
            if end is None:
                report.fail(f"run {run_id}: an attempt of {a.step!r} never ended and nothing followed it")
                continue
            per_key[a.key].append((a.started, end, run_id))
    for key, intervals in per_key.items():
        peak, at, holders = _max_overlap(intervals)
        report.peak[key] = peak
        limit = limits.get(key, LIMIT)
        if peak > limit:
            report.limit_violations += 1
            report.fail(f"key {key!r}: {peak} runs executing at once at {at} (limit {limit}): {sorted(holders)}")


def _max_overlap(intervals):
    events = sorted([(s, 1, r) for s, _e, r in intervals] + [(e, -1, r) for _s, e, r in intervals])
    current, peak, at, holders, open_runs = 0, 0, None, set(), set()
    for moment, delta, run_id in events:  # at equal instants, ends (-1) sort before starts (+1)
        current += delta
        (open_runs.add if delta > 0 else open_runs.discard)(run_id)
        if current > peak:
            peak, at, holders = current, moment, set(open_runs)
    return peak, at, holders


def _check_events(runs, steps, report: Report) -> None:
    """Every event-resumed run got its event: the one sent for its ``n``, found by its wait."""
    sent: dict[Any, list[Event]] = defaultdict(list)
    for event in Event.objects.filter(name=EVENT):
        sent[event.data_value.get("n")].append(event)
    for run in runs.values():
        if run.task_name != "chaos.waiter" or run.status != RunStatus.COMPLETED:
            continue
        n = run.args_value[0]
        name = f"run {run.id} (chaos.waiter({n}))"
        if len(sent[n]) != 1:
            report.fail(f"{name}: {len(sent[n])} events were recorded for it, expected 1")
            continue
        event = sent[n][0]
        if run.result_value != event.data_value["token"]:
            report.fail(f"{name}: returned {run.result_value!r}, its event carried {event.data_value['token']!r}")
        wait = steps[run.id].get("evt")
        got = None if wait is None else wait.output_value.get("event")
        if got is None or got.get("_row", event.pk) != event.pk or got["data"] != event.data_value:
            report.fail(f"{name}: its wait recorded {got!r}, not event #{event.pk}")


def _check_children(runs, report: Report) -> None:
    """A parent that completed has exactly its children, each completed once (none duplicated)."""
    children: dict[str, list[Run]] = defaultdict(list)
    for run in runs.values():
        if run.parent_id:
            children[run.parent_id].append(run)
    for run in runs.values():
        if run.task_name != "chaos.parent" or run.status != RunStatus.COMPLETED:
            continue
        mine = children[run.id]
        indexes = sorted(c.args_value[1] for c in mine)
        if indexes != list(range(CHILDREN + 1)) or any(c.status != RunStatus.COMPLETED for c in mine):
            report.fail(f"run {run.id} (chaos.parent): children {[(c.id, c.status) for c in mine]}")
