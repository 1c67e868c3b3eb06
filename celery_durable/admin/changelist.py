"""The runs changelist at scale: estimated counts, index-backed filters, one query for steps.

With a million runs the stock changelist spends its time in ``COUNT(*)`` (twice),
``SELECT DISTINCT`` for filter choices and ``date_hierarchy``, and in loading every
column of every row (arguments and results can be a megabyte each). Here:

- :class:`EstimatedCountPaginator` counts exactly up to ``EXACT_COUNT_LIMIT`` rows and,
  on PostgreSQL, estimates beyond that (``pg_class.reltuples`` when unfiltered, the
  planner's row estimate when filtered);
- :class:`TaskFilter` lists task names with an index skip-scan on PostgreSQL;
- :class:`CreatedFilter` replaces ``date_hierarchy`` (which runs ``SELECT DISTINCT`` over
  the dates of the whole table) with "since" links and a from/to form;
- :class:`RunChangeList` loads only the listed columns and the steps done/recorded of the
  page's runs in one aggregate query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Substr
from django.http import HttpRequest
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.functional import cached_property

from ..flow.keys import stored_key
from ..models import Run, Step
from ..states import StepStatus

#: Up to this many matching rows the changelist shows an exact count.
EXACT_COUNT_LIMIT = 10_000
#: At most this many task names are offered by the task filter.
MAX_TASK_CHOICES = 500

LIST_COLUMNS = (
    "id",
    "task_name",
    "status",
    "priority",
    "created_at",
    "started_at",
    "finished_at",
    "wake_at",
    "waiting_for",
    "executions",
    "slot_key1",
    "slot_key2",
)


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that never counts more than ``EXACT_COUNT_LIMIT`` rows on PostgreSQL.

    ``estimated`` is ``True`` when :attr:`count` is the planner's estimate; the
    changelist then shows "about N runs". Other databases count exactly.
    """

    estimated = False

    @cached_property
    def count(self) -> int:
        """The number of rows, exact up to ``EXACT_COUNT_LIMIT``, estimated above on PostgreSQL."""
        queryset: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return queryset.count()
        if not queryset.query.where and not queryset.query.distinct:
            estimate = _table_estimate(queryset)
            if estimate > EXACT_COUNT_LIMIT:
                self.estimated = True
                return estimate
            return queryset.count()
        capped = queryset.order_by()[: EXACT_COUNT_LIMIT + 1].count()
        if capped <= EXACT_COUNT_LIMIT:
            return capped
        self.estimated = True
        return max(_plan_estimate(queryset), capped)


def _table_estimate(queryset: QuerySet[Any]) -> int:
    """``pg_class.reltuples`` of the table (``-1`` if it was never analyzed)."""
    connection = connections[queryset.db]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(queryset.model._meta.db_table)],
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else -1


def _plan_estimate(queryset: QuerySet[Any]) -> int:
    """The planner's estimate of the rows ``queryset`` returns (``EXPLAIN``, not executed)."""
    sql, params = queryset.order_by().query.sql_with_params()
    connection = connections[queryset.db]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str | bytes):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def task_names(using: str = "default") -> list[str]:
    """Distinct task names of stored runs, sorted (at most ``MAX_TASK_CHOICES``).

    On PostgreSQL a recursive query walks the ``(task_name, created_at)`` index one
    distinct value at a time (a "skip scan"): a few index probes per task instead of a scan
    of every run. MySQL/MariaDB do that themselves for ``DISTINCT``; SQLite is for
    development.
    """
    connection = connections[using]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Run._meta.db_table)
        column = connection.ops.quote_name("task_name")
        sql = (
            f"WITH RECURSIVE names(name) AS ("
            f"(SELECT {column} FROM {table} ORDER BY {column} LIMIT 1) "
            f"UNION ALL SELECT (SELECT {column} FROM {table} WHERE {column} > names.name "
            f"ORDER BY {column} LIMIT 1) FROM names WHERE names.name IS NOT NULL) "
            f"SELECT name FROM names WHERE name IS NOT NULL LIMIT %s"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [MAX_TASK_CHOICES])
            return [row[0] for row in cursor.fetchall()]
    names = Run.objects.using(using).order_by("task_name").values_list("task_name", flat=True).distinct()
    return list(names[:MAX_TASK_CHOICES])


#: Flow-control options whose key names a run (``FlowState.name`` = ``option:task:key``).
KEYED_OPTIONS = ("idempotency_key", "singleton", "debounce")


def runs_by_flow_key(key: str, names: list[str] | None = None) -> list[str]:
    """Ids of the runs that hold ``key`` as idempotency key, singleton or debounce key.

    One exact lookup per (option, task) on the unique ``FlowState.name`` index, with the
    task names from :func:`task_names`: no pattern match over the table.
    """
    from ..models import FlowState

    tasks = task_names() if names is None else names
    states = [stored_key(f"{option}:{task}:{key}") for option in KEYED_OPTIONS for task in tasks]
    if not states:
        return []
    rows = FlowState.objects.filter(name__in=states, run_id__isnull=False).values_list("run_id", flat=True)
    return [run_id for run_id in rows if run_id]


def request_task_names(request: HttpRequest) -> list[str]:
    """:func:`task_names`, queried once per request (the filter and the search both need it)."""
    cached: list[str] | None = getattr(request, "_durable_task_names", None)
    if cached is None:
        cached = task_names()
        request._durable_task_names = cached  # type: ignore[attr-defined]
    return list(cached)


class TaskFilter(admin.SimpleListFilter):
    """Filter by task name (exact)."""

    title = "task"
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = request_task_names(request)
        current = self.value()
        if current and current not in names:
            names.append(current)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        return queryset.filter(task_name=value) if value else queryset


class KeyFilter(admin.ListFilter):
    """Runs of one concurrency key (``?key=``, set by the links in the keys column)."""

    title = "concurrency key"
    parameter_name = "key"

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        if self.parameter_name in params:
            value = params.pop(self.parameter_name)
            self.used_parameters[self.parameter_name] = value[-1] if isinstance(value, list) else value

    def value(self) -> str:
        """The selected key ("" for none)."""
        return str(self.used_parameters.get(self.parameter_name) or "")

    def has_output(self) -> bool:
        # Keys are unbounded (one per user, say): offered by the list's links, not here.
        return bool(self.value())

    def expected_parameters(self) -> list[str | None]:
        return [self.parameter_name]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        key = self.value()
        return queryset.filter(Q(slot_key1=key) | Q(slot_key2=key)) if key else queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        yield {
            "selected": False,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "All",
        }
        yield {"selected": True, "query_string": changelist.get_query_string(), "display": self.value()}


SINCE_CHOICES = (
    ("1h", "Last hour", timedelta(hours=1)),
    ("24h", "Last 24 hours", timedelta(hours=24)),
    ("7d", "Last 7 days", timedelta(days=7)),
    ("30d", "Last 30 days", timedelta(days=30)),
)


def _parse_moment(value: str, end_of_day: bool) -> datetime:
    day = parse_date(value.strip()) if len(value.strip()) == 10 else None
    if day is not None:
        moment = datetime.combine(day + timedelta(days=1) if end_of_day else day, time.min)
    else:
        parsed = parse_datetime(value.strip())
        if parsed is None:
            raise ValueError(value)
        moment = parsed
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class CreatedFilter(admin.ListFilter):
    """Filter by creation time: "since" links, and a from/to form (dates or date-times).

    ``created_to`` given as a date includes that whole day.
    """

    title = "created"
    template = "admin/celery_durable/run/created_filter.html"
    parameters = ("created_since", "created_from", "created_to")

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.parameters:
            if name in params:
                value = params.pop(name)
                self.used_parameters[name] = value[-1] if isinstance(value, list) else value
        self.hidden: list[tuple[str, str]] = []

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return list(self.parameters)

    @property
    def value_from(self) -> str:
        """The ``created_from`` value, for the form."""
        return self.value("created_from")

    @property
    def value_to(self) -> str:
        """The ``created_to`` value, for the form."""
        return self.value("created_to")

    def value(self, name: str) -> str:
        """The raw value of one of this filter's parameters ("" if absent)."""
        return str(self.used_parameters.get(name) or "")

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        since = self.value("created_since")
        try:
            if since:
                delta = {key: d for key, _, d in SINCE_CHOICES}.get(since)
                if delta is None:
                    raise ValueError(since)
                queryset = queryset.filter(created_at__gte=timezone.now() - delta)
            if self.value("created_from"):
                queryset = queryset.filter(created_at__gte=_parse_moment(self.value("created_from"), False))
            if self.value("created_to"):
                queryset = queryset.filter(created_at__lt=_parse_moment(self.value("created_to"), True))
        except ValueError as exc:
            raise IncorrectLookupParameters(f"invalid created filter: {exc}") from exc
        return queryset

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        # Hidden fields keep the other filters, the search and the ordering when the
        # from/to form is submitted.
        own = set(self.parameters) | {"p"}
        self.hidden = [(k, v) for k, v in changelist.params.items() if k not in own]
        since = self.value("created_since")
        ranged = bool(self.value("created_from") or self.value("created_to"))
        choices = [
            {
                "selected": not since and not ranged,
                "query_string": changelist.get_query_string(remove=list(self.parameters)),
                "display": "Any time",
            }
        ]
        for key, label, _ in SINCE_CHOICES:
            choices.append(
                {
                    "selected": since == key,
                    "query_string": changelist.get_query_string(
                        {"created_since": key}, remove=["created_from", "created_to"]
                    ),
                    "display": label,
                }
            )
        return iter(choices)


#: Characters of the arguments read per listed run (never the whole value).
ARGS_HEAD_CHARS = 400


class RunChangeList(ChangeList):
    """Loads only the listed columns (arguments cut short), and steps done/recorded per run in one query."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        for values in request.GET.lists():
            if any("\x00" in item for item in (values[0], *values[1])):
                # No stored value has one, and PostgreSQL refuses it in a query: the
                # changelist answers "invalid filter" (?e=1) like any other bad value.
                raise IncorrectLookupParameters("a NUL character in a filter")
        queryset: QuerySet[Any] = super().get_queryset(request, exclude_parameters)
        listed: QuerySet[Any] = queryset.only(*LIST_COLUMNS).annotate(
            args_head=Substr("args", 1, ARGS_HEAD_CHARS), kwargs_head=Substr("kwargs", 1, ARGS_HEAD_CHARS)
        )
        return listed

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        counts = (
            {
                row["run_id"]: (row["done"], row["total"])
                for row in Step.objects.filter(run_id__in=[run.pk for run in rows])
                .values("run_id")
                .annotate(total=Count("id"), done=Count("id", filter=Q(status=StepStatus.COMPLETED)))
                .order_by()
            }
            if rows
            else {}
        )
        for run in rows:
            run.steps_done, run.steps_total = counts.get(run.pk, (0, 0))
        self.result_list = rows
