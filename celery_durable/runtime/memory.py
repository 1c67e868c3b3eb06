"""In-memory checkpoint writers: for direct calls (nothing stored) and for unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..options import RetryPolicy
from .steps import StepContext, StoredStep


class MemoryCheckpointWriter:
    """Keeps checkpoints in a dict: ``writes`` counts every checkpoint written."""

    def __init__(self) -> None:
        self.stored: dict[str, StoredStep] = {}
        self.writes = 0

    def save_output(
        self, step_id: str, kind: str, output: str, attempts: int, started_at: datetime, exists: bool
    ) -> None:
        """Record the step in memory."""
        self.writes += 1
        self.stored[step_id] = StoredStep(step_id, kind, "completed", output, attempts)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Any]:
        """No transaction in memory."""
        yield None


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
