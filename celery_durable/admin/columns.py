"""The columns of the runs changelist: one short, linked rendering of a run per column."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import dateformat, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from .. import operations, readable
from ..models import Run
from .run_page import human_duration

#: Characters of the positional / keyword arguments shown in the changelist.
ARGS_PREVIEW_CHARS = 60


class RunColumns:
    """``list_display`` methods of ``RunAdmin`` (mixed into it)."""

    admin_site: Any

    @admin.display(description="run", ordering="id")
    def run_link(self, run: Run) -> str:
        url = self._change_url_pattern().replace("__run_id__", quote(run.pk))
        shown = run.pk if len(run.pk) <= 12 else f"{run.pk[:8]}…"
        return format_html('<a href="{}" class="durable-run-id" title="{}">{}</a>', url, run.pk, shown)

    def action_checkbox(self, obj: Run) -> SafeString:
        # Django's markup, without a form widget rendered through a template for every row:
        # that was half of the changelist's rendering time.
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            format_html(gettext("Select this object for an action - {}"), str(obj)),
        )

    def _change_url_pattern(self) -> str:
        # One reverse() per admin instance instead of one per listed row.
        pattern: str | None = getattr(self, "_change_url", None)
        if pattern is None:
            pattern = reverse(f"{self.admin_site.name}:celery_durable_run_change", args=["__run_id__"])
            self._change_url = pattern
        return pattern

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> str:
        badge = format_html('<span class="durable-status durable-status--{0}">{0}</span>', run.status)
        if run.priority:  # no column of its own: it would push the others off a 1,400 px screen
            return format_html('{} <span class="durable-note" title="priority">prio {}</span>', badge, run.priority)
        return badge

    @admin.display(description="created", ordering="created_at")
    def created(self, run: Run) -> str:
        moment = timezone.localtime(run.created_at)
        # Date and time may stack in two lines when the page is narrow.
        return format_html(
            "<span>{}</span> <span>{}</span>", dateformat.format(moment, "Y-m-d"), dateformat.format(moment, "H:i:s")
        )

    @admin.display(description="keys")
    def keys(self, run: Run) -> str:
        keys = [key for key in (run.slot_key1, run.slot_key2) if key]
        if not keys:
            return ""
        # A per-task key reads "path:value" here (the task is in its own column).
        prefix = f"{run.task_name}:"
        return format_html_join(
            " ",
            '<a href="?key={}" class="durable-key-link" title="{}">{}</a>',
            ((quote_plus(key), key, key.removeprefix(prefix)) for key in keys),
        )

    @admin.display(description="arguments")
    def arguments(self, run: Run) -> str:
        args = readable.compact(getattr(run, "args_head", None), ARGS_PREVIEW_CHARS)
        kwargs = readable.compact(getattr(run, "kwargs_head", None), ARGS_PREVIEW_CHARS)
        shown = " ".join(part for part in (args if args != "[]" else "", kwargs if kwargs != "{}" else "") if part)
        return format_html('<code class="durable-args-preview" title="{0}">{0}</code>', shown) if shown else ""

    @admin.display(description="task", ordering="task_name")
    def task(self, run: Run) -> str:
        return format_html('<span class="durable-task-name" title="{0}">{0}</span>', run.task_name)

    @admin.display(description="duration")
    def duration(self, run: Run) -> str:
        return human_duration(operations.duration(run))

    @admin.display(description="steps")
    def steps(self, run: Run) -> str:
        return f"{getattr(run, 'steps_done', 0)} / {getattr(run, 'steps_total', 0)}"
