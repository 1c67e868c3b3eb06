"""The deploy check: replay the history of every unfinished run against the code deployed now.

Nothing is written: the replay's writer refuses every write, and each replay runs in a
transaction that is rolled back (code outside steps runs during a replay, as it does in
every execution; a write it makes is undone here).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from .. import clock
from ..runtime.replaycheck import TASK_REMOVED, ReplayVerdict, check_history
from ..store import history
from .ports import TaskRegistry


@dataclass
class DeployReport:
    """The verdicts of a deploy check: ``ok`` when no run would fail."""

    checked: int = 0
    failures: list[ReplayVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every checked run replays."""
        return not self.failures

    def grouped(self) -> dict[tuple[str, str], list[ReplayVerdict]]:
        """The failures by ``(task name, cause)``, sorted."""
        groups: dict[tuple[str, str], list[ReplayVerdict]] = {}
        for verdict in sorted(self.failures, key=lambda v: (v.task_name, v.cause or "", v.run_id)):
            groups.setdefault((verdict.task_name, verdict.cause or ""), []).append(verdict)
        return groups

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "failed": len(self.failures),
            "groups": [
                {"task_name": task, "cause": cause, "runs": [v.to_json() for v in verdicts]}
                for (task, cause), verdicts in self.grouped().items()
            ],
        }


def check(recorded: history.History, registry: TaskRegistry, using: str = "default") -> ReplayVerdict:
    """Replay one recorded history against the task as registered now."""
    spec = registry.spec(recorded.task_name)
    if spec is None:
        durable = registry.is_durable(recorded.task_name)
        why = "is not registered" if durable is None else "is no longer a durable task"
        detail = f"task {recorded.task_name!r} {why} in this deployment"
        return ReplayVerdict(recorded.run_id, recorded.task_name, False, TASK_REMOVED, None, detail)
    with transaction.atomic(using=using):
        try:
            return check_history(
                run_id=recorded.run_id,
                task_name=recorded.task_name,
                body=spec.body(),
                args=recorded.args,
                kwargs=recorded.kwargs,
                history=recorded.steps,
                policy=spec.policy,
                clock=clock.now,
            )
        finally:
            transaction.set_rollback(True, using=using)


def check_run(run_id: str, registry: TaskRegistry, using: str = "default") -> ReplayVerdict:
    """Replay the recorded history of ``run_id`` (any status) against the current code."""
    return check(history.of_run(run_id, using), registry, using)


def check_deploy(
    registry: TaskRegistry, task_names: Iterable[str] | None = None, using: str = "default"
) -> DeployReport:
    """Replay every unfinished run that has a history; collect the ones that would fail."""
    report = DeployReport()
    for recorded in history.unfinished(list(task_names) if task_names else None, using):
        report.checked += 1
        verdict = check(recorded, registry, using)
        if not verdict.ok:
            report.failures.append(verdict)
    return report
