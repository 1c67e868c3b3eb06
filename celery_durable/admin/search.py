"""The runs changelist's search: run id or id prefix, task, keys by their value, arguments (opt-in).

What one search term can name, each looked up through an index except the opt-in argument
search:

- a run id, or the start of one (at least ``MIN_PREFIX`` characters);
- a concurrency key by its value alone: the stored key is ``task:path:value`` (per-task
  limits) or ``name:value`` (``scope="global"``), built here from the registered tasks;
- an idempotency, singleton or debounce key by its value (``FlowState`` names);
- ``field:value``: runs whose ``step.set_metadata`` field equals the value (the
  ``RunMetadata`` index; a value is compared as text: ``order_id:42`` finds ``42`` and ``"42"``);
- with ``CELERY_DURABLE["ADMIN_ARGUMENT_SEARCH"] = True``, any run whose stored arguments
  contain the term: a scan of the arguments of every run (off by default).
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db.models import Q, QuerySet

from ..flow.keys import stored_key
from ..models import BatchItem, Run
from ..store.metadata import matching

#: The shortest search term also tried as a run id prefix.
MIN_PREFIX = 4
#: Runs found per kind of match (id prefix, arguments).
MAX_MATCHES = 200
#: A search matching more runs than this by key falls back to a plain filter.
MAX_SEARCH_IDS = 10_000


def _durable_tasks() -> list[Any]:
    from celery import current_app

    from ..integration.task import DurableTask

    # A web process has not imported the task modules (the worker's autodiscovery did).
    current_app.loader.import_default_modules()
    return [task for task in list(current_app.tasks.values()) if isinstance(task, DurableTask)]


def concurrency_keys(term: str, names: list[str]) -> list[str]:
    """Every stored form a concurrency key whose value is ``term`` can have."""
    keys = {stored_key(term), *(stored_key(f"{task}:{term}") for task in names)}
    for task in _durable_tasks():
        concurrency = getattr(task, "concurrency", None)
        if concurrency is None:
            continue
        entries = list(concurrency) if isinstance(concurrency, list | tuple) else [concurrency]
        for index, entry in enumerate(entries):
            if entry.scope == "global":
                keys.add(stored_key(f"{entry.name}:{term}"))
            else:
                path = entry.key if isinstance(entry.key, str) else f"#{index}"
                keys.add(stored_key(f"{task.name}:{path}:{term}"))
    return sorted(keys)


def argument_search_enabled() -> bool:
    """``CELERY_DURABLE["ADMIN_ARGUMENT_SEARCH"]`` (off by default: it scans every run's arguments)."""
    from ..conf import get_settings

    return bool(get_settings().ADMIN_ARGUMENT_SEARCH)


def by_arguments(term: str) -> list[str]:
    """Runs whose stored arguments contain ``term`` (as typed, or JSON-escaped)."""
    forms = {term, json.dumps(term)[1:-1]}
    match = Q()
    for form in forms:
        match |= Q(args__contains=form) | Q(kwargs__contains=form)
    return list(Run.objects.filter(match).order_by().values_list("pk", flat=True)[:MAX_MATCHES])


_METADATA_TERM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(.+)\Z", re.DOTALL)


def by_metadata(term: str) -> QuerySet[Run] | None:
    """For a ``field:value`` term, the runs whose metadata field equals the value; else ``None``."""
    found = _METADATA_TERM.match(term)
    if found is None:
        return None
    return matching(Run.objects.all(), [(found.group(1), found.group(2))])


def by_prefix(term: str) -> list[str]:
    """Runs whose id starts with ``term`` (at least ``MIN_PREFIX`` characters)."""
    if len(term) < MIN_PREFIX:
        return []
    return list(Run.objects.filter(pk__startswith=term).order_by("pk").values_list("pk", flat=True)[:MAX_MATCHES])


def batch_of_call(term: str) -> list[str]:
    """The batch run of the batched call ``term`` (``Batch``), if it has formed."""
    run_id = BatchItem.objects.filter(pk=term).values_list("run_id", flat=True).first()
    return [] if run_id is None else [run_id]


def search_ids(term: str, names: list[str]) -> list[str] | None:
    """Ids of the runs ``term`` names (see the module); ``None`` if a key matches too many runs."""
    from .changelist import runs_by_flow_key

    keys = concurrency_keys(term, names)
    by_key = list(
        Run.objects.filter(Q(slot_key1__in=keys) | Q(slot_key2__in=keys))
        .order_by()
        .values_list("pk", flat=True)[: MAX_SEARCH_IDS + 1]
    )
    if len(by_key) > MAX_SEARCH_IDS:
        return None
    found = [term, *by_prefix(term), *by_key, *runs_by_flow_key(term, names), *batch_of_call(term)]
    if argument_search_enabled():
        found.extend(by_arguments(term))
    return list(dict.fromkeys(found))
