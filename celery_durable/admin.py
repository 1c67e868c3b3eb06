"""A read-only view of runs and their steps in the Django admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Run, Step


class StepInline(admin.TabularInline):  # type: ignore[type-arg]
    """The steps of a run, read-only."""

    model = Step
    fields = ("step_id", "kind", "status", "attempts", "started_at", "finished_at", "output", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("id",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Runs, read-only: monitoring (actions come with the control-plane admin)."""

    list_display = ("id", "task_name", "status", "created_at", "started_at", "finished_at", "executions")
    list_filter = ("status", "task_name")
    search_fields = ("=id", "task_name")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Run._meta.fields]
    inlines = [StepInline]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
