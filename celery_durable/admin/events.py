"""``EventAdmin``: recent events, what each started or resumed, and a "send event" form.

The list is the record of every event sent (one that matched nothing is there too). An
event's page says which ``on_event`` runs it started and which waits it resumed, and which
runs wait for its name now with their match, to compare with its data. "Send event" needs
the ``celery_durable.send_event`` permission and goes through
:func:`celery_durable.api.send_event`, like any other sender; each send is a ``LogEntry``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from .. import readable
from ..exceptions import DurableError
from ..models import Event, Run, Step
from ..states import RunStatus, StepStatus
from .changelist import EstimatedCountPaginator
from .run_page import decode_state

#: Characters of an event's data shown in the list.
DATA_PREVIEW_CHARS = 80
#: Runs listed per section of an event's page.
MAX_LISTED = 100
#: Runs an on_event task starts for an event are created within this long of it.
START_WINDOW = timedelta(minutes=1)


class SendEventForm(forms.Form):
    """Name, data (a JSON object) and an optional idempotency id."""

    name = forms.CharField(max_length=255, help_text="The event name, e.g. order.paid")
    payload = forms.CharField(
        label="Data",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60}),
        initial="{}",
        required=False,
        help_text='A JSON object, e.g. {"order_id": 17}',
    )
    id = forms.CharField(
        max_length=255,
        required=False,
        label="Event id",
        help_text="Optional: the same id within the idempotency window is sent once.",
    )

    def clean_payload(self) -> dict[str, Any]:
        """The data as a dict (JSON object), or a form error."""
        text = (self.cleaned_data.get("payload") or "").strip() or "{}"
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError("The data must be a JSON object ({...}).")
        return value


def started_by(event: Event) -> list[Run]:
    """Runs of ``on_event`` tasks that this event started (their ``event`` argument is it)."""
    marker = json.dumps(event.event_id)
    return list(
        Run.objects.filter(created_at__gte=event.received_at, created_at__lte=event.received_at + START_WINDOW)
        .filter(kwargs__contains=f'"id": {marker}')
        .only("id", "task_name", "status", "created_at")
        .order_by("created_at", "pk")[:MAX_LISTED]
    )


def resumed_by(event: Event) -> list[Step]:
    """Wait steps this event completed (a scan of the completed waits: one event's page only)."""
    return list(
        Step.objects.filter(kind="wait", status=StepStatus.COMPLETED, output__contains=f'"_row": {event.pk}}}')
        .select_related("run")
        .only("step_id", "finished_at", "run__id", "run__task_name", "run__status")
        .order_by("finished_at")[:MAX_LISTED]
    )


def waiting_for(name: str) -> list[dict[str, Any]]:
    """Runs waiting for events ``name`` now, with their match (the ``(status, waiting_for)`` index)."""
    steps = (
        Step.objects.filter(
            run__status=RunStatus.WAITING, run__waiting_for=name, kind="wait", status=StepStatus.PENDING
        )
        .select_related("run")
        .only("step_id", "output", "run__id", "run__task_name", "run__wake_at")[:MAX_LISTED]
    )
    rows = []
    for step in steps:
        state = decode_state(step.output) or {}
        match = state.get("match")
        rows.append({"step": step, "match": readable.dumps(match) if match else ""})
    return rows


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Events: the record of what was sent, and a form to send one."""

    list_display = ("event_link", "name", "short_id", "received", "data_preview")
    list_display_links = None
    search_fields = ("=name",)
    search_help_text = "An exact event name or event id."
    ordering = ("-received_at", "-pk")
    list_per_page = 50
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    change_list_template = "admin/celery_durable/event/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sent through the "send event" form (send_event permission), never saved directly

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_send_permission(self, request: HttpRequest) -> bool:
        """``celery_durable.send_event``."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.send_event"))

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup == "name"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        queryset: QuerySet[Event] = super().get_queryset(request)
        name = request.GET.get("name")
        if name is not None and "\x00" in name:
            raise IncorrectLookupParameters("a NUL character in a filter")
        return queryset

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if "\x00" in term:
            return queryset.none(), False
        return queryset.filter(Q(name=term) | Q(event_id=term)), False

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Event | None:
        if not object_id.isdigit():
            return None
        event: Event | None = super().get_object(request, object_id, from_field)
        return event

    @admin.display(description="event", ordering="pk")
    def event_link(self, event: Event) -> str:
        url = reverse(f"{self.admin_site.name}:celery_durable_event_change", args=[quote(event.pk)])
        return format_html('<a href="{}" class="durable-event-link">#{}</a>', url, event.pk)

    @admin.display(description="id")
    def short_id(self, event: Event) -> str:
        value = event.event_id or ""
        return format_html('<code title="{}">{}</code>', value, value if len(value) <= 24 else f"{value[:21]}…")

    @admin.display(description="received", ordering="received_at")
    def received(self, event: Event) -> str:
        from .run_page import when

        return when(event.received_at)

    @admin.display(description="data")
    def data_preview(self, event: Event) -> str:
        shown = readable.compact(event.data, DATA_PREVIEW_CHARS)
        return format_html('<code class="durable-args-preview" title="{0}">{0}</code>', shown)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        context = {
            "title": "Events",
            "can_send": self.has_send_permission(request),
            "send_url": reverse(f"{self.admin_site.name}:celery_durable_event_send"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [path("send/", wrap(self.send_view), name="celery_durable_event_send"), *super().get_urls()]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """An event: its data, what it started and resumed, and what waits for its name now."""
        event = self.get_object(request, unquote(object_id))
        if event is None:
            raise Http404(f"no event with id {unquote(object_id)!r}")
        if not self.has_view_permission(request, event):
            raise PermissionDenied
        data, _ = readable.pretty(event.data, 20_000)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Event {event.name} #{event.pk}",
            "original": event,
            "event": event,
            "data_json": data,
            "started": started_by(event),
            "resumed": resumed_by(event),
            "waiting": waiting_for(event.name),
            "runs_opts": Run._meta,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/celery_durable/event/event.html", context)

    def send_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the form; POST: :func:`celery_durable.api.send_event` (``send_event`` permission)."""
        if not (self.has_view_permission(request) and self.has_send_permission(request)):
            raise PermissionDenied
        form = SendEventForm(request.POST or None, initial={"name": request.GET.get("name", "")})
        if request.method == "POST" and form.is_valid():
            from ..integration import actions

            values = form.cleaned_data
            # An event stored by this send has a larger key than every event before it.
            before = Event.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            try:
                sent = actions.send_event(values["name"], values["payload"], id=values["id"] or None)
            except DurableError as exc:
                form.add_error(None, f"{type(exc).__name__}: {exc}")
            else:
                row = Event.objects.filter(event_id=sent.id).order_by("-pk").first()
                if row is None:  # pragma: no cover - send_event returned an event it did not store
                    return HttpResponseRedirect(reverse(f"{self.admin_site.name}:celery_durable_event_changelist"))
                if row.pk <= before:
                    self.message_user(
                        request,
                        f"An event with id {sent.id!r} was already sent at {row.received_at:%Y-%m-%d %H:%M:%S}: "
                        f"nothing done (the same id is sent once within the idempotency window).",
                        messages.WARNING,
                    )
                else:
                    self._log_sent(request, row)
                    self.message_user(request, f"Event {sent.name!r} sent (id {sent.id}).", messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse(f"{self.admin_site.name}:celery_durable_event_change", args=[quote(row.pk)])
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Send an event",
            "form": form,
        }
        return TemplateResponse(request, "admin/celery_durable/event/send.html", context)

    def _log_sent(self, request: HttpRequest, row: Event) -> None:
        user_id = request.user.pk
        if user_id is not None:
            LogEntry.objects.log_actions(
                user_id=user_id,
                queryset=[row],
                action_flag=ADDITION,
                change_message="Sent from the admin",
                single_object=True,
            )
