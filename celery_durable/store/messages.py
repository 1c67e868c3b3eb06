"""Run messages: what a transition returns for the integration to publish after commit.

A message says "execute run X" (its Celery task id is the run id); the run row, not the
message, holds the state, so a duplicate or stale message is harmless. This module needs
no Django app registry (the Celery task class imports it at import time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

#: The publish options that send a run somewhere of its own: a run with one is never run inline.
DESTINATION = ("queue", "exchange", "routing_key")


@dataclass(frozen=True)
class Claimed:
    """The lease a hand-over took, for the process that freed the slot, on the run it gave it to.

    That process executes the run itself (inline hand-off) without claiming it again: these
    are the run's columns the claim would have returned (``store.claims.handed_over``).
    """

    generation: int
    executions: int
    parent_id: str | None
    started_at: datetime | None
    metadata: str | None
    forked_from_id: str | None
    slot_key1: str | None
    slot_key2: str | None


@dataclass(frozen=True)
class RunMessage:
    """A message to publish for a runnable run (after the transaction commits)."""

    run_id: str
    task_name: str
    args: str
    kwargs: str
    options: str
    countdown: float | None = None
    # When set, the countdown is taken from this time at publish (not from when the message was
    # made): a batch of due runs takes a while to publish, and its late messages would
    # otherwise be late by that much.
    due_at: datetime | None = None
    # The run executed before (a sleep, wait, children or retry came due): it goes to the
    # broker's resume lane, ahead of first executions (see integration.routing).
    resume: bool = False
    # Claimed for the process that made the message (never published: it executes the run).
    claimed: Claimed | None = None
