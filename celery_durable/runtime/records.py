"""What a step context reads and writes: stored checkpoints, and the writer protocol."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass
class StoredStep:
    """A checkpoint as loaded at the start of an execution."""

    step_id: str
    kind: str
    status: str  # "completed", "failed" or "pending"
    output: str | None
    attempts: int


class CheckpointWriter(Protocol):
    """Where a step context writes checkpoints (the ORM store, or an in-memory one in tests)."""

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Record a completed step (fenced: raises ``_LeaseLost`` if the run changed hands)."""

    def flush(self) -> None:
        """Write what an earlier call deferred (called at every step boundary; fenced).

        A writer may defer a step's checkpoint until the next boundary, or until the run's
        completion writes it in its own transaction.
        """

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction that wraps an atomic step's body and its checkpoint."""

    def complete_pending(self, step_id: str, output: str) -> None:
        """Mark a pending step (sleep, wait, child runs) completed with ``output`` (fenced)."""

    def find_event(self, names: list[str], match: dict[str, Any] | None, exclude: set[str]) -> dict[str, Any] | None:
        """The oldest event with one of ``names`` received since the run started that matches, if any."""

    def children(self, step_id: str) -> list[dict[str, Any]]:
        """The child runs of a step, in order: ``{id, status, result, error}`` each."""

    def cancel_requested(self) -> bool:
        """Whether a cancellation of this run is known (checked at step boundaries, no query)."""

    def send_event(self, name: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
        """Send an event with this id (deduplicated) and return it as JSON."""

    def set_metadata(self, metadata: dict[str, Any], changed: dict[str, Any]) -> None:
        """Store the run's metadata (all fields) and index the ``changed`` ones (fenced)."""

    def set_progress(self, progress: dict[str, Any]) -> None:
        """Store the progress of the running step on the run (fenced)."""
