"""Pausing tasks from the admin: the active pauses (with "Resume"), and "Pause" from the runs list.

Both need ``celery_durable.pause_task``. Every pause and resume done here is recorded as a
Django :class:`~django.contrib.admin.models.LogEntry` on the pause, naming the user. The
rows change only through :mod:`celery_durable.integration.actions`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from ..exceptions import DurableError
from ..integration import actions
from ..models import Pause, Run
from ..states import FINISHED, RunStatus


def can_pause(request: HttpRequest) -> bool:
    """``celery_durable.pause_task``."""
    return bool(request.user.has_perm("celery_durable.pause_task"))


def log_pause(request: HttpRequest, row: Pause, flag: int, message: str) -> None:
    """One LogEntry on the pause row, naming the user."""
    if request.user.pk is None:
        return
    LogEntry.objects.log_actions(
        user_id=request.user.pk,
        queryset=[row],
        action_flag=flag,
        change_message=message,
    )


def pause_scope(request: HttpRequest, task_name: str, key: str | None) -> Pause | None:
    """Pause one task (or key) for the admin user; report and log it."""
    by = f"admin:{request.user.get_username()}"
    try:
        row = actions.pause(task_name, key, by)
    except DurableError as exc:
        messages.error(request, f"Not paused {task_name}: {exc}")
        return None
    log_pause(request, row, ADDITION, f"Paused {row} (admin)")
    return row


def resume_scope(request: HttpRequest, row: Pause) -> int:
    """Resume one pause for the admin user; log it; return how many runs were queued again."""
    log_pause(request, row, DELETION, f"Resumed {row} (admin)")
    return len(actions.resume(row.task_name, row.key))


class PauseActionsMixin:
    """The runs changelist's "Pause the tasks (or the keys) of the selected runs" actions."""

    @admin.action(permissions=["pause"], description="Pause the tasks of the selected runs")
    def pause_tasks(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        names = sorted(set(queryset.order_by().values_list("task_name", flat=True).distinct()[:100]))
        paused = [row for name in names if (row := pause_scope(request, name, None)) is not None]
        if paused:
            messages.success(
                request,
                f"Paused {len(paused)} task(s): {', '.join(p.task_name for p in paused)}. "
                "Their runs start again after Resume (Durable pauses).",
            )

    @admin.action(permissions=["pause"], description="Pause the concurrency keys of the selected runs")
    def pause_keys(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        rows = queryset.order_by().values_list("task_name", "slot_key1", "slot_key2").distinct()[:100]
        scopes = sorted({(task, key) for task, *keys in rows for key in keys if key})
        if not scopes:
            messages.warning(request, "None of the selected runs has a concurrency key: nothing paused.")
            return
        paused = [row for task, key in scopes if (row := pause_scope(request, task, key)) is not None]
        if paused:
            messages.success(request, f"Paused {len(paused)} key(s): {', '.join(str(p) for p in paused)}.")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return can_pause(request)


@admin.register(Pause)
class PauseAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The active pauses: who paused what, since when, how many runs they hold; "Resume"."""

    list_display = ("task_name", "key_or_task", "created_at", "by", "held_runs")
    list_display_links = None
    ordering = ("created_at",)
    actions = ("resume_pauses",)
    fields = ("task_name", "key")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("celery_durable.view_run")) or can_pause(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return can_pause(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # resume is the action: it queues the held runs again

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return can_pause(request)

    @admin.display(description="scope")
    def key_or_task(self, row: Pause) -> str:
        return "whole task" if row.key is None else f"key {row.key}"

    @admin.display(description="unfinished runs held")
    def held_runs(self, row: Pause) -> int:
        runs = Run.objects.filter(task_name=row.task_name).exclude(status__in=[*FINISHED, RunStatus.RUNNING])
        if row.key is not None:
            runs = runs.filter(slot_key1=row.key) | runs.filter(slot_key2=row.key)
        return runs.count()

    def save_model(self, request: HttpRequest, obj: Pause, form: Any, change: bool) -> None:
        """The add form pauses through the engine (a second pause of the same scope does nothing)."""
        row = pause_scope(request, obj.task_name, obj.key or None)
        if row is not None:
            obj.pk = row.pk
            obj.created_at, obj.by = row.created_at, row.by

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        return None  # pause_scope logged it (with what was paused)

    def response_add(self, request: HttpRequest, obj: Pause, post_url_continue: str | None = None) -> Any:
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:celery_durable_pause_changelist"))

    @admin.action(permissions=["pause"], description="Resume selected pauses (their runs start in order)")
    def resume_pauses(self, request: HttpRequest, queryset: QuerySet[Pause]) -> None:
        queued = 0
        rows = list(queryset)
        for row in rows:
            try:
                queued += resume_scope(request, row)
            except DurableError as exc:
                messages.error(request, f"Not resumed {row}: {exc}")
        messages.success(request, f"Resumed {len(rows)} pause(s); {queued} run(s) queued again.")
