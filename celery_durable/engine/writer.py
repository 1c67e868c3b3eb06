"""The writer of a real run's step context.

The fenced checkpoint store, plus the event, child-run and cancellation look-ups that the
suspending steps need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import signals
from ..store import events, metadata, suspension
from ..store.checkpoints import CheckpointStore, CheckpointWrite
from .active import active


class RunWriter(CheckpointStore):
    """The :class:`~celery_durable.runtime.records.CheckpointWriter` of one execution."""

    def __init__(
        self,
        run_id: str,
        generation: int,
        task_name: str,
        send_event: Callable[[str, dict[str, Any], str], Any],
        using: str = "default",
    ) -> None:
        super().__init__(run_id, generation, using)
        self.task_name = task_name
        self._send_event = send_event

    def _written(self, write: CheckpointWrite) -> None:
        """A checkpoint committed: tell ``step_completed`` receivers."""
        if write.duration is not None and signals.step_completed.has_listeners(self.task_name):
            signals.send(
                signals.step_completed,
                self.task_name,
                self.run_id,
                step_id=write.step_id,
                attempt=write.attempts,
                duration=write.duration,
            )

    def find_event(self, names: list[str], match: dict[str, Any] | None, exclude: set[str]) -> dict[str, Any] | None:
        """The oldest matching event received since the run was created."""
        return events.find_event(self.run_id, names, match, exclude, self.using)

    def children(self, step_id: str) -> list[dict[str, Any]]:
        """The step's child runs in order, with their outcome."""
        return suspension.children_of(self.run_id, step_id, self.using)

    def cancel_requested(self) -> bool:
        """Known cancellation (from the heartbeat) or pause (from a refused checkpoint); no query.

        Both stop the run at this step boundary; the engine tells them apart by
        :attr:`pause_pending`.
        """
        return self.run_id in active.cancelled or self.pause_pending

    def send_event(self, name: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
        """Send an event (deduplicated by ``event_id``) and return it as JSON."""
        event = self._send_event(name, data, event_id)
        result: dict[str, Any] = event.to_json()
        return result

    def set_metadata(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """Store the run's metadata and index the changed fields (fenced)."""
        metadata.set_metadata(self.run_id, self.generation, values, changed, self.using)

    def set_progress(self, progress: dict[str, Any]) -> None:
        """Store the running step's progress (fenced)."""
        metadata.set_progress(self.run_id, self.generation, progress, self.using)
