"""``ScheduleStateAdmin``: the schedules with their next and last tick, and what an operator does to them.

Pause, resume and "trigger now" are list actions; "backfill" is a form with a range. All
four need the ``celery_durable.manage_schedule`` permission, go through
:mod:`celery_durable.integration.actions` like code would, and are each a ``LogEntry``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from ..exceptions import DurableError
from ..integration import actions
from ..integration.timetable import CeleryTimetable
from ..models import ScheduleState


class BackfillForm(forms.Form):
    """The range whose ticks to fire (both ends included)."""

    start = forms.DateTimeField(help_text="The first moment of the range, e.g. 2026-01-01 00:00:00")
    end = forms.DateTimeField(help_text="The last moment of the range (included)")

    def clean(self) -> dict[str, Any]:
        """``start`` must not be after ``end``."""
        values: dict[str, Any] = super().clean() or {}
        if values.get("start") and values.get("end") and values["start"] > values["end"]:
            raise forms.ValidationError("The start is after the end.")
        return values


@admin.register(ScheduleState)
class ScheduleStateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Schedules: declared in code, listed here with their ticks; pause, resume, trigger, backfill."""

    list_display = (
        "task_name",
        "definition",
        "overlap",
        "next_tick_at",
        "last_tick_at",
        "last_run",
        "paused",
        "declared",
        "backfill_link",
    )
    list_display_links = None
    ordering = ("task_name",)
    search_fields = ("task_name",)
    actions = ("pause", "resume", "trigger_now")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # declared with @durable_task(schedule=...), created by the services

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_manage_permission(self, request: HttpRequest) -> bool:
        """``celery_durable.manage_schedule``."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.manage_schedule"))

    @admin.display(description="overlap")
    def overlap(self, row: ScheduleState) -> str:
        spec = CeleryTimetable().spec(row.task_name)
        return spec.schedule.overlap if spec is not None and spec.schedule is not None else "—"

    @admin.display(description="declared", boolean=True)
    def declared(self, row: ScheduleState) -> bool:
        spec = CeleryTimetable().spec(row.task_name)
        return spec is not None and spec.schedule is not None and spec.schedule.definition == row.definition

    @admin.display(description="last run")
    def last_run(self, row: ScheduleState) -> str:
        if not row.last_run_id:
            return "—"
        url = reverse(f"{self.admin_site.name}:celery_durable_run_change", args=[quote(row.last_run_id)])
        return format_html('<a href="{}">{}</a>', url, row.last_run_id)

    @admin.display(description="backfill")
    def backfill_link(self, row: ScheduleState) -> str:
        url = reverse(f"{self.admin_site.name}:celery_durable_schedulestate_backfill", args=[quote(row.pk)])
        return format_html('<a href="{}">{}</a>', url, "backfill…")

    def _each(self, request: HttpRequest, queryset: QuerySet[ScheduleState], verb: str, act: Any) -> None:
        if not self.has_manage_permission(request):
            raise PermissionDenied
        done = []
        for row in queryset:
            try:
                outcome = act(row.task_name)
            except DurableError as exc:
                self.message_user(request, f"{row.task_name}: not {verb}: {exc}", messages.ERROR)
                continue
            if outcome is False:
                continue
            detail = f" (run {outcome})" if isinstance(outcome, str) else ""
            self.log_change(request, row, f"{verb.capitalize()}{detail}")
            done.append(row.task_name)
        if done:
            self.message_user(request, f"{verb.capitalize()}: {', '.join(done)}.", messages.SUCCESS)

    @admin.action(permissions=["manage"], description="Pause the selected schedules")
    def pause(self, request: HttpRequest, queryset: QuerySet[ScheduleState]) -> None:
        self._each(request, queryset, "paused", actions.pause_schedule)

    @admin.action(permissions=["manage"], description="Resume the selected schedules (from their next tick)")
    def resume(self, request: HttpRequest, queryset: QuerySet[ScheduleState]) -> None:
        self._each(request, queryset, "resumed", actions.resume_schedule)

    @admin.action(permissions=["manage"], description="Trigger the selected schedules now (one run each)")
    def trigger_now(self, request: HttpRequest, queryset: QuerySet[ScheduleState]) -> None:
        self._each(request, queryset, "triggered", actions.trigger_schedule)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/backfill/", wrap(self.backfill_view), name="celery_durable_schedulestate_backfill"),
            *super().get_urls(),
        ]

    def backfill_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the range form; POST: fire each tick of the range not fired yet (``manage_schedule``)."""
        if not (self.has_view_permission(request) and self.has_manage_permission(request)):
            raise PermissionDenied
        row = self.get_object(request, unquote(object_id))
        if row is None:
            raise Http404(f"no schedule with id {unquote(object_id)!r}")
        form = BackfillForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            start, end = form.cleaned_data["start"], form.cleaned_data["end"]
            try:
                started = actions.backfill_schedule(row.task_name, start, end)
            except DurableError as exc:
                form.add_error(None, f"{type(exc).__name__}: {exc}")
            else:
                self.log_change(
                    request, row, f"Backfilled {start.isoformat()} .. {end.isoformat()}: {len(started)} run(s)"
                )
                self.message_user(
                    request,
                    f"{row.task_name}: {len(started)} tick(s) fired; ticks fired before were left alone.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse(f"{self.admin_site.name}:celery_durable_schedulestate_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Backfill {row.task_name}",
            "form": form,
            "row": row,
        }
        return TemplateResponse(request, "admin/celery_durable/schedulestate/backfill.html", context)
