"""Run messages: what a transition returns for the integration to publish after commit.

A message says "execute run X" (its Celery task id is the run id); the run row, not the
message, holds the state, so a duplicate or stale message is harmless. This module needs
no Django app registry (the Celery task class imports it at import time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
