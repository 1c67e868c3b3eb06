"""The vocabulary of run and step states: one enum each, and the sets the transitions use.

Every module that asks "is this run finished?" or "which runs can the waker queue?" reads
the answer here, so a new state (or a new transition) changes one place.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """The states of a run (SPEC §7)."""

    PENDING = "pending"  # recorded, waiting for a concurrency slot (the backlog)
    QUEUED = "queued"  # runnable: its message is in the broker, or due at ``wake_at``
    RUNNING = "running"  # an execution holds its lease
    SLEEPING = "sleeping"  # in ``step.sleep`` until ``wake_at``
    WAITING = "waiting"  # for an event (``waiting_for``) or for child runs
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # refused by flow control at ``.delay()``
    PAUSED = "paused"  # held by a pause of its task (or key) until ``resume``

    @property
    def label(self) -> str:
        """The human name (``"Pending"``), as Django's choices show it."""
        return self.name.title()


class StepStatus(StrEnum):
    """The states of a step checkpoint (``pending``: a sleep, wait or child run in progress)."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


def choices(enum: type[StrEnum]) -> list[tuple[str, str]]:
    """Django ``choices`` for a status enum."""
    return [(member.value, member.name.title()) for member in enum]


FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED})
UNFINISHED = frozenset(RunStatus) - FINISHED
# What the waker may move to ``queued`` when ``wake_at`` comes: a countdown, a sleep, a wait's timeout.
WAKEABLE = frozenset({RunStatus.QUEUED, RunStatus.SLEEPING, RunStatus.WAITING})
# The statuses in which a run may hold its concurrency slots (a paused run keeps them, so the
# key's backlog stays behind it and resume keeps the order).
HOLDING_SLOTS = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED})
REPLAYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})
CANCELLABLE = UNFINISHED
# A child that ended this way no longer counts as pending for its parent's gather.
CHILD_ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
