"""In-memory checkpoint writers: for direct calls (nothing stored) and for unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..options import RetryPolicy
from .events import Event, consumption_key, matches
from .records import StoredStep
from .steps import StepContext


class MemoryCheckpointWriter:
    """Keeps checkpoints in a dict: ``writes`` counts every checkpoint written."""

    def __init__(self) -> None:
        self.stored: dict[str, StoredStep] = {}
        self.writes = 0
        self.events: list[dict[str, Any]] = []
        self.child_runs: dict[str, list[dict[str, Any]]] = {}
        self.cancelled = False
        self.metadata: dict[str, Any] = {}
        self.progress: list[dict[str, Any]] = []

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Record the step in memory."""
        self.writes += 1
        self.stored[step_id] = StoredStep(step_id, kind, "completed", output, attempts)

    def flush(self) -> None:
        """Nothing is deferred in memory."""

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:
        """No transaction in memory."""
        yield None

    def complete_pending(self, step_id: str, output: str) -> None:
        """Mark a pending step completed."""
        self.writes += 1
        old = self.stored.get(step_id)
        self.stored[step_id] = StoredStep(step_id, old.kind if old else "run", "completed", output, 1)

    def find_event(self, names: list[str], match: dict[str, Any] | None, exclude: set[str]) -> dict[str, Any] | None:
        """The first recorded event with one of ``names`` and matching data."""
        for event in self.events:
            if event["name"] in names and consumption_key(event) not in exclude and matches(event["data"], match):
                return event
        return None

    def children(self, step_id: str) -> list[dict[str, Any]]:
        """Child runs registered for the step by the test."""
        return self.child_runs.get(step_id, [])

    def cancel_requested(self) -> bool:
        """The test's cancellation flag."""
        return self.cancelled

    def send_event(self, name: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
        """Record the event (once per id)."""
        for event in self.events:
            if event["id"] == event_id:
                return event
        event = Event(name, data, event_id, _utcnow()).to_json()
        self.events.append(event)
        return event

    def set_metadata(self, metadata: dict[str, Any], changed: dict[str, Any]) -> None:
        """Keep the metadata in memory (counted as a write)."""
        self.writes += 1
        self.metadata = dict(metadata)

    def set_progress(self, progress: dict[str, Any]) -> None:
        """Keep every progress report in memory."""
        self.progress.append(progress)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def ephemeral_context(task_name: str, policy: RetryPolicy) -> StepContext:
    """A step context that runs every step inline and keeps nothing (direct calls)."""
    return StepContext(
        run_id="direct-call",
        task_name=task_name,
        checkpoints={},
        writer=MemoryCheckpointWriter(),
        policy=RetryPolicy(retries=0, retry_backoff=policy.retry_backoff),
        clock=_utcnow,
        max_output_bytes=2**63,
    )
