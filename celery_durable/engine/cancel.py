"""Cancelling runs: the store's transition, then what follows it once committed."""

from __future__ import annotations

from .. import signals
from ..store import cancellation, slots
from ..store.cancellation import Cancellation
from .ports import Publisher


def cancel(run_id: str, reason: str, publisher: Publisher) -> Cancellation:
    """Cancel a run and its unfinished children (at once, or at the next step boundary)."""
    outcome = cancellation.cancel(run_id, reason)
    finish(outcome, publisher)
    return outcome


def finish(outcome: Cancellation, publisher: Publisher) -> None:
    """After a cancellation committed: free the cancelled runs' slots and tell everyone.

    Their backlogs are promoted and what resumed is published; the result backend and the
    signal receivers hear of each cancelled run.
    """
    messages = list(outcome.messages)
    for run_id in outcome.cancelled:
        messages += slots.release(run_id)
    publisher.publish_on_commit(messages)
    for run_id, task_name, reason, durable in cancellation.cancelled_rows(outcome.cancelled):
        publisher.cancelled(run_id, reason or "cancelled", durable)
        signals.send(signals.run_cancelled, task_name, run_id, reason=reason)
