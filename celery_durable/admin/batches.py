"""The calls of a batch run (``Batch``) on its run page, and a call's id leading to its batch."""

from __future__ import annotations

from typing import Any

from django.http import Http404

from .. import readable
from ..models import BatchItem

#: Calls listed on a batch run's page.
MAX_ITEMS = 200
#: Characters of a call's arguments shown.
ARGUMENT_CHARS = 500


def context(run_id: str) -> dict[str, Any]:
    """``batch_items`` (the first :data:`MAX_ITEMS` calls, oldest first) and ``batch_total``; empty for other runs."""
    rows = list(
        BatchItem.objects.filter(run_id=run_id)
        .order_by("created_at", "id")
        .values_list("id", "arguments", "created_at")[: MAX_ITEMS + 1]
    )
    if not rows:
        return {}
    cut = len(rows) > MAX_ITEMS
    total = BatchItem.objects.filter(run_id=run_id).count() if cut else len(rows)
    items = [
        {"id": call_id, "arguments": _pretty(arguments), "created_at": created_at}
        for call_id, arguments, created_at in rows[:MAX_ITEMS]
    ]
    return {"batch_items": items, "batch_total": total}


def run_of_call(call_id: str) -> str | None:
    """The id of the batch run a call joined; ``Http404`` naming the call while its batch forms."""
    if "\x00" in call_id:
        return None
    row = BatchItem.objects.filter(id=call_id).values_list("run_id", "batch_key").first()
    if row is None:
        return None
    run_id, batch_key = row
    if run_id is None:
        raise Http404(f"call {call_id!r} waits in the forming batch {batch_key!r}: no run yet")
    return str(run_id)


def _pretty(arguments: str) -> str:
    text, cut = readable.pretty(arguments, ARGUMENT_CHARS)
    return f"{text} …" if cut else text
