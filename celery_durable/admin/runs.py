"""``RunAdmin``: the runs changelist, the run page, the dashboard and the run actions.

Every action goes through :mod:`celery_durable.operations`, i.e. through the same
``cancel``/``replay`` functions as the Python API, each behind its own permission
(``celery_durable.cancel_run``, ``celery_durable.replay_run``). Actions are POST-only and
CSRF-protected; bulk actions ask for confirmation first and say how many runs they change
and how many they skip.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from .. import operations
from ..models import Run
from . import batches, dashboard, forks, run_page, waterfall
from .actions import RunActionsAdmin, earlier_of, log_bulk
from .changelist import (
    CreatedFilter,
    EstimatedCountPaginator,
    KeyFilter,
    RunChangeList,
    TaskFilter,
    request_task_names,
)
from .columns import RunColumns
from .pauses import PauseActionsMixin
from .search import MAX_SEARCH_IDS, by_metadata, concurrency_keys, search_ids

#: The URL parameters the changelist accepts: its declared filters.
ALLOWED_LOOKUPS = frozenset({"status", "status__exact", "task", "key", "created_since", "created_from", "created_to"})
#: Seconds between reloads of the changelist and of an unfinished run's page.
REFRESH_SECONDS = 5
#: The session key remembering that a user turned auto-refresh off.
REFRESH_SESSION_KEY = "celery_durable_auto_refresh"


@admin.register(Run)
class RunAdmin(RunColumns, PauseActionsMixin, RunActionsAdmin):
    """Durable runs: monitoring, and cancel/replay actions behind their own permissions."""

    list_display = (
        "run_link",
        "task",
        "status_badge",
        "arguments",
        "keys",
        "created",
        "duration",
        "steps",
    )
    list_display_links = None
    list_filter = (TaskFilter, "status", CreatedFilter, KeyFilter)
    search_fields = ("=id", "=task_name")
    search_help_text = (
        "A run id or its first characters, a task name, or the value of a concurrency, idempotency, "
        "singleton or debounce key, field:value of run metadata (arguments too, with ADMIN_ARGUMENT_SEARCH)."
    )
    ordering = ("-created_at",)
    list_per_page = 50
    list_max_show_all = 200
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    actions = ("cancel_runs", "replay_failed_step", "replay_from_start", "pause_tasks", "pause_keys")
    change_list_template = "admin/celery_durable/run/change_list.html"

    # --- permissions ---------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Runs are removed by retention (durable_prune), never by hand: deleting an
        # unfinished run would strand its worker, its children and its waiters.
        return False

    # --- changelist ----------------------------------------------------------------------

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        """Only the declared filters: no arbitrary lookup (``?args__regex=``) from the URL."""
        return lookup in ALLOWED_LOOKUPS

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Run | None:
        """The run, or ``None`` for an id no run can have (one with a NUL: PostgreSQL refuses it)."""
        if "\x00" in object_id:
            return None
        run: Run | None = super().get_object(request, object_id, from_field)
        return run

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Run], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if any("\x00" in run_id for run_id in selected):
            self.message_user(request, "No run has an id with a NUL character: nothing changed.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        response: HttpResponse | None = super().response_action(request, queryset, *args, **kwargs)
        return response

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = {"title": "Durable runs", **self.refresh_context(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    # --- auto-refresh --------------------------------------------------------------------

    def refresh_context(self, request: HttpRequest) -> dict[str, Any]:
        """Whether the page reloads itself (a per-session choice, on by default) and the toggle links."""
        here = quote_plus(request.get_full_path())
        url = reverse(f"{self.admin_site.name}:celery_durable_run_refresh")
        return {
            "auto_refresh": bool(request.session.get(REFRESH_SESSION_KEY, True)),
            "refresh_seconds": REFRESH_SECONDS,
            "refresh_off_url": f"{url}?on=0&next={here}",
            "refresh_on_url": f"{url}?on=1&next={here}",
        }

    def refresh_view(self, request: HttpRequest) -> HttpResponse:
        """GET ``?on=0|1&next=``: turn the auto-refresh of the runs pages off or on, go back."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        request.session[REFRESH_SESSION_KEY] = request.GET.get("on") != "0"
        target = request.GET.get("next", "")
        if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
            target = reverse(f"{self.admin_site.name}:celery_durable_run_changelist")
        return HttpResponseRedirect(target)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[RunChangeList]:
        return RunChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        # Exact, case-sensitive matches only: each one is an index lookup on a million rows
        # (the stock "=field" search is iexact, which PostgreSQL cannot answer from a b-tree).
        term = search_term.strip()
        if not term:
            return queryset, False
        if "\x00" in term:  # no stored value has one (PostgreSQL refuses it in a query)
            return queryset.none(), False
        names = request_task_names(request)
        if term in names:
            return queryset.filter(task_name=term), False
        cached: dict[str, list[str] | None] = getattr(request, "_durable_search", {})
        if term not in cached:
            # The changelist builds its queryset more than once per request: look up once.
            cached[term] = search_ids(term, names)
            request._durable_search = cached  # type: ignore[attr-defined]
        ids = cached[term]
        tagged = by_metadata(term)
        tagged_ids: list[str] = []
        if tagged is not None:
            key = f"metadata {term}"
            if key not in cached:
                cached[key] = list(tagged.order_by().values_list("pk", flat=True)[: MAX_SEARCH_IDS + 1])
            tagged_ids = cached[key] or []
            if len(tagged_ids) > MAX_SEARCH_IDS:  # a common value: the runs that have it, through a semi-join
                return queryset.filter(pk__in=tagged.values("pk")), False
        if ids is None:  # a key with very many runs: filter on the key itself
            keys = concurrency_keys(term, names)
            match = Q(pk=term) | Q(slot_key1__in=keys) | Q(slot_key2__in=keys) | Q(pk__in=tagged_ids)
        else:
            # One IN list: PostgreSQL answers it from the primary key (an OR of two would scan).
            match = Q(pk__in=list(dict.fromkeys([*ids, *tagged_ids])))
        return queryset.filter(match), False

    # --- bulk actions --------------------------------------------------------------------

    @admin.action(permissions=["cancel"], description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> HttpResponse | None:
        return self._bulk(request, queryset, "cancel")

    @admin.action(permissions=["replay"], description="Replay selected runs from the failed step")
    def replay_failed_step(self, request: HttpRequest, queryset: QuerySet[Run]) -> HttpResponse | None:
        return self._bulk(request, queryset, "replay")

    @admin.action(permissions=["replay"], description="Replay selected runs from the start")
    def replay_from_start(self, request: HttpRequest, queryset: QuerySet[Run]) -> HttpResponse | None:
        return self._bulk(request, queryset, "replay_from_start")

    BULK_VERBS = {
        "cancel": (
            "cancel",
            "cancelled (a running run stops at its next step boundary)",
            "Only unfinished runs can be cancelled.",
        ),
        "replay": ("replay from the failed step", "replayed", "Only failed or cancelled runs can be replayed."),
        "replay_from_start": (
            "replay from the start",
            "replayed from the start",
            "Only failed or cancelled runs can be replayed.",
        ),
    }

    def _bulk(self, request: HttpRequest, queryset: QuerySet[Run], operation: str) -> HttpResponse | None:
        verb, done_verb, rule = self.BULK_VERBS[operation]
        if request.POST.get("confirmed") != "yes":
            counts = operations.preview(operation, queryset)
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Confirm: {verb}",
                "operation": operation,
                "verb": verb,
                "rule": rule,
                "preview": counts,
                "action": request.POST.get("action", ""),
                "select_across": request.POST.get("select_across", "0"),
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "media": self.media,
            }
            return TemplateResponse(request, "admin/celery_durable/run/confirm_bulk.html", context)
        reason = request.POST.get("reason", "").strip()
        earlier = earlier_of(queryset, operations.CANCELLABLE if operation == "cancel" else operations.REPLAYABLE)
        result = operations.bulk(operation, queryset, reason=reason)
        what = {
            "cancel": "Cancelled",
            "replay": "Replayed from the failed step",
            "replay_from_start": "Replayed from the start",
        }
        log_bulk(
            request,
            result.done,
            f"{what[operation]} (bulk action{f'; reason: {reason}' if reason else ''})",
            earlier if operation != "cancel" else {},
        )
        self.message_user(request, f"{len(result.done)} run(s) {done_verb}.", messages.SUCCESS)
        if result.skipped_total:
            self.message_user(
                request,
                f"Skipped {result.skipped_total} run(s): {result.describe_skipped()}. {rule}",
                messages.WARNING,
            )
        if result.errors:
            sample = "; ".join(f"{run_id}: {error}" for run_id, error in list(result.errors.items())[:5])
            self.message_user(
                request,
                f"{len(result.errors)} run(s) changed state meanwhile and were left alone: {sample}",
                messages.WARNING,
            )
        return None

    # --- URLs: dashboard and single-run actions ------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(self.dashboard_view), name="{}_{}_dashboard".format(*info)),
            path("refresh/", wrap(self.refresh_view), name="{}_{}_refresh".format(*info)),
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="{}_{}_cancel".format(*info)),
            path("<path:object_id>/replay/", wrap(require_POST(self.replay_view)), name="{}_{}_replay".format(*info)),
            path("<path:object_id>/fork/", wrap(self.fork_view), name="{}_{}_fork".format(*info)),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Runs per status per task, throughput, backlogs and due sleepers."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Durable runs: dashboard",
            **dashboard.context(),
        }
        return TemplateResponse(request, "admin/celery_durable/run/dashboard.html", context)

    # --- the run page --------------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            run = self._run_or_404(request, object_id)
        except Http404:
            batch_run = batches.run_of_call(unquote(object_id))  # a batched call's id: its batch run
            if batch_run is None:
                raise
            return HttpResponseRedirect(self._run_url(batch_run))
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Run {run.pk}",
            "subtitle": run.task_name,
            "original": run,
            **self.refresh_context(request),
            "has_view_permission": True,
            **self.run_context(request, run),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/celery_durable/run/run.html", context)

    def run_context(self, request: HttpRequest, run: Run) -> dict[str, Any]:
        """What the run page shows: values, the step in progress, the timeline, family, actions."""
        site = self.admin_site.name
        page = run_page.context(run)
        return {
            **page,
            **batches.context(run.pk),
            "waterfall": waterfall.build(run, page["timeline"], page["in_progress"], page["now"]),
            **self.history_context(run),
            "changelist_url": reverse(f"{site}:celery_durable_run_changelist"),
            "can_cancel": self.has_cancel_permission(request) and run.status in operations.CANCELLABLE,
            "can_replay": self.has_replay_permission(request) and run.status in operations.REPLAYABLE,
            "can_fork": self.has_fork_permission(request) and run.durable,
            "fork_url": reverse(f"{site}:celery_durable_run_fork", args=[quote(run.pk)]),
            **forks.family(run),
            "progress": forks.progress(run, page["timeline"]),
            "metadata": forks.metadata(run),
            "preview_chars": run_page.OUTPUT_PREVIEW_CHARS,
            "cancel_url": reverse(f"{site}:celery_durable_run_cancel", args=[quote(run.pk)]),
            "replay_url": reverse(f"{site}:celery_durable_run_replay", args=[quote(run.pk)]),
            "dashboard_url": reverse(f"{site}:celery_durable_run_dashboard"),
            "events_url": reverse(f"{site}:celery_durable_event_changelist"),
            "pauses_url": reverse(f"{site}:celery_durable_pause_changelist"),
            **run_page.explanation(run),
        }
