"""``LimitAdmin``: the concurrency keys, their slots in use, backlog and override.

Every key a run has used is listed with its declared limit, the override in force (if
any), the slots in use and the runs waiting for it. A user with the
``celery_durable.set_limit`` permission edits a key's override; the change goes through
:func:`celery_durable.set_limit`'s path (a raise promotes the backlog at once, a lowering
stops no running run) and is a ``LogEntry``, as every admin change is.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from ..engine.spec import MAX_LIMIT
from ..integration import actions
from ..models import Run, Slot
from ..states import RunStatus


def _backlog(field: str) -> Any:
    pending = Run.objects.filter(status=RunStatus.PENDING, **{field: OuterRef("key")}).order_by()
    counted = pending.values(field).annotate(count=Count("*")).values("count")[:1]
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


class LimitForm(forms.ModelForm):  # type: ignore[type-arg]
    """Only the override is editable: empty to follow the declared limit again."""

    override = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_LIMIT,
        help_text="Empty: the declared limit. Lowering stops no running run; raising admits the backlog now.",
    )

    class Meta:
        model = Slot
        fields = ("override",)


@admin.register(Slot)
class LimitAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Concurrency limits and keys."""

    form = LimitForm
    list_display = ("key", "in_use", "declared", "override", "in_force", "backlog")
    readonly_fields = ("key", "declared", "in_use", "backlog")
    fields = ("key", "declared", "override", "in_use", "backlog")
    search_fields = ("key",)
    search_help_text = "Part of a key (task:parameter:value, or name:value for a shared limit)."
    ordering = ("key",)
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key's row is made by its first run (or set_limit)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """``celery_durable.set_limit``."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.set_limit"))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or self.has_change_permission(request, obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Slot]:
        slots: QuerySet[Slot] = super().get_queryset(request)
        return slots.annotate(backlog_runs=_backlog("slot_key1") + _backlog("slot_key2"))

    @admin.display(description="declared limit", ordering="limit")
    def declared(self, slot: Slot) -> int:
        return slot.limit

    @admin.display(description="limit in force")
    def in_force(self, slot: Slot) -> int:
        return slot.effective_limit

    @admin.display(description="backlog", ordering="backlog_runs")
    def backlog(self, slot: Slot) -> int:
        return int(getattr(slot, "backlog_runs", 0))

    def construct_change_message(self, request: HttpRequest, form: Any, formsets: Any, add: bool = False) -> Any:
        """The log entry says what the override was and became."""
        before, after = form.initial.get("override"), form.cleaned_data.get("override")
        return f"Override {before if before is not None else 'none'} -> {after if after is not None else 'none'}"

    def save_model(self, request: HttpRequest, obj: Slot, form: Any, change: bool) -> None:
        # Through the store's path, never obj.save(): the slot counters stay the store's.
        actions.set_key_limit(obj.key, form.cleaned_data.get("override"))
