"""Batching (``Batch``): a call is recorded at ``.delay()``; a batch run forms by size or by time.

The call that brings a key's waiting calls to ``max_size`` forms the batch in its own
transaction; the services tick forms the batches whose oldest waiting call is ``wait`` old.
"""

from __future__ import annotations

from typing import Any

from ..conf import get_settings
from ..exceptions import DurableConfigError
from ..flow.keys import resolve_key, stored_key
from ..options import Batch, to_seconds
from ..store import batches
from .ports import Publisher
from .spec import TaskSpec

#: Publish options a batched call cannot take: they describe one run, and a batch run is many calls.
#: (Other publish options are stored with the call; the batch run has those of its first call.)
REFUSED_OPTIONS = ("countdown", "eta", "link", "link_error")


def batch_of(spec: TaskSpec) -> Batch:
    """The task's ``Batch`` (``DurableConfigError`` if it has none)."""
    if spec.batch is None:
        raise DurableConfigError(f"{spec.name} is not a batched task")
    return spec.batch


def key_of(spec: TaskSpec, arguments: dict[str, Any]) -> str:
    """The stored batch key of one call: the task's name and the call's ``Batch.key`` value."""
    value = resolve_key(spec.name, "batch", batch_of(spec).key, arguments, (), arguments)
    return stored_key(f"{spec.name}:{value}")


def check_call(spec: TaskSpec, args: tuple[Any, ...], options: dict[str, Any]) -> None:
    """A batched call takes keyword arguments only, and no per-run publish option."""
    if args:
        raise DurableConfigError(
            f"{spec.name}: a batched task takes keyword arguments only (each call is one item of the batch)"
        )
    refused = sorted(name for name in REFUSED_OPTIONS if options.get(name) is not None)
    if refused:
        raise DurableConfigError(
            f"{spec.name}: a batched call cannot take {', '.join(refused)} (a batch is many calls)"
        )


def record(
    spec: TaskSpec,
    call_id: str,
    arguments: dict[str, Any],
    arguments_json: str,
    options_json: str,
    publisher: Publisher,
) -> str:
    """Record one call; form its batch now if it fills it. Returns the call's id.

    The call is recorded first (it commits with the caller's transaction, if any); the batch
    it fills forms in a transaction of its own, and its message goes out after that commits.
    A call recorded by a process that dies before forming waits for the services tick.
    """
    batch = batch_of(spec)
    key = key_of(spec, arguments)
    wait = to_seconds(batch.wait, "wait")
    added = batches.add(call_id, spec.name, key, arguments_json, batch.max_size, wait, options_json)
    if added and batches.waiting(key) >= batch.max_size:
        formed = batches.form(spec.name, key, batch.max_size, full=True)
        if formed is not None:
            publisher.publish_on_commit([formed])
    return call_id


def form_due(publisher: Publisher, using: str = "default") -> int:
    """Form the batches whose oldest waiting call is due; publish their runs. Returns how many formed."""
    formed = []
    for task_name, key, max_size in batches.due_keys(get_settings().WAKER_BATCH_SIZE, using):
        message = batches.form(task_name, key, max_size, full=False, using=using)
        if message is not None:
            formed.append(message)
    publisher.publish(formed)
    return len(formed)
