"""A limited run's completion and the hand-over of its slots, in one transaction.

Without it a run of a task with ``concurrency=`` commits its completion, then a second
transaction reads the run again, clears ``holds_slots`` and hands the slot on. Here the
completion's own UPDATE clears ``holds_slots`` (only if the run holds its slots) and the
hand-over follows before the one commit: two statements and a commit fewer per run, and no
moment where a completed run still holds a slot.
"""

from __future__ import annotations

from django.db import transaction

from . import slots
from .messages import RunMessage
from .runs import complete_sql


def complete_releasing(
    run_id: str, generation: int, result: str, slot_keys: tuple[str | None, str | None, str | None]
) -> list[RunMessage] | None:
    """Complete a top-level run holding slots ``(slot_key1, slot_key2, fair_slot)`` and hand them on.

    Returns the runs promoted into the freed slots, or ``None`` when nothing was written: the
    execution no longer holds the run, or the run does not hold its slots. The caller then
    completes it the plain way (:func:`store.runs.complete`), which tells the two apart.
    """
    keys = sorted(key for key in slot_keys[:2] if key)
    with transaction.atomic():
        if complete_sql(run_id, generation, result, "default", releasing=True) != 1:
            return None
        handed = slots.pass_on(keys, slot_keys[2])
    # More than one key, or nobody to hand to: promotions in their own transactions, as
    # ``slots.release`` does (holding a slot row while taking another's could deadlock).
    return handed if handed is not None else slots.promote(keys)
