"""Cancel, replay and fork of one run from the run page: a confirmation first, and a record of who.

Every cancel, replay and fork done in the admin (one run or a bulk action) is recorded as a
Django :class:`~django.contrib.admin.models.LogEntry` naming the user, and the run page
lists them ("History"). A replay's entry keeps what the run was before (its status and
the error it failed with), since the replay clears that from the run. The runs themselves
change only through :mod:`celery_durable.operations`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import quote, unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.functions import Substr
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import operations
from ..exceptions import DurableError
from ..integration import actions
from ..models import Run, Step
from ..states import RunStatus
from . import forks
from .run_page import decode_error

#: Entries of the run page's history.
MAX_HISTORY = 50
#: A bulk action records each run's earlier error up to this many runs (one query).
MAX_EARLIER = 5_000
#: Characters of an earlier error kept in a history entry.
ERROR_CHARS = 300


def earlier_outcome(status: str, error_text: str | None, reason: str | None = None) -> str:
    """``"was failed: KeyError: 'sku'"`` / ``"was cancelled (reason: bad deploy)"``."""
    text = f"was {status}"
    error = decode_error(error_text)
    if error and (error.get("type") or error.get("message")):
        text += f": {error.get('type') or 'error'}: {error.get('message') or ''}".rstrip(": ")
    if reason:
        text += f" (reason: {reason})"
    return text[:ERROR_CHARS]


def history(run: Run) -> list[LogEntry]:
    """The admin's records of this run (cancel, replay), newest first."""
    return list(
        LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Run), object_id=run.pk)
        .select_related("user")
        .order_by("-action_time", "-pk")[:MAX_HISTORY]
    )


def log_bulk(request: HttpRequest, done: list[str], message: str, earlier: dict[str, str]) -> None:
    """One LogEntry per changed run of a bulk action, naming the user."""
    user_id = request.user.pk
    if user_id is None:
        return
    by_message: dict[str, list[str]] = defaultdict(list)
    for run_id in done:
        text = f"{message}; {earlier[run_id]}" if run_id in earlier else message
        by_message[text].append(run_id)
    for text, ids in by_message.items():
        runs = Run.objects.filter(pk__in=ids).only("id", "task_name", "status")
        LogEntry.objects.log_actions(user_id=user_id, queryset=runs, action_flag=CHANGE, change_message=text)


def earlier_of(queryset: QuerySet[Run], statuses: tuple[str, ...]) -> dict[str, str]:
    """Each eligible run's status and error as a history phrase (up to ``MAX_EARLIER`` runs)."""
    rows = (
        queryset.filter(status__in=list(statuses))
        .order_by()
        .annotate(error_head=Substr("error", 1, 4000))
        .values_list("pk", "status", "error_head", "cancel_reason")[: MAX_EARLIER + 1]
    )
    found = list(rows)
    if len(found) > MAX_EARLIER:
        return {}
    return {pk: earlier_outcome(status, error, reason) for pk, status, error, reason in found}


class RunActionsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The base of ``RunAdmin``: the cancel (with its confirmation page) and replay views."""

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        """``celery_durable.cancel_run``."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.cancel_run"))

    def has_replay_permission(self, request: HttpRequest) -> bool:
        """``celery_durable.replay_run``."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.replay_run"))

    def has_fork_permission(self, request: HttpRequest) -> bool:
        """``celery_durable.fork_run``."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.fork_run"))

    def _run_or_404(self, request: HttpRequest, object_id: str) -> Run:
        run: Run | None = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(f"no durable run with id {unquote(object_id)!r}")
        return run

    def _run_url(self, run_id: str) -> str:
        return reverse(f"{self.admin_site.name}:celery_durable_run_change", args=[quote(run_id)])

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the confirmation page; POST with ``confirmed=yes``: cancel (``cancel_run``)."""
        if not (self.has_view_permission(request) and self.has_cancel_permission(request)):
            raise PermissionDenied
        run = self._run_or_404(request, object_id)
        if request.method != "POST" or request.POST.get("confirmed") != "yes":
            return self._cancel_confirmation(request, run)
        reason = request.POST.get("reason", "").strip()
        try:
            operations.cancel(run.pk, reason=reason)
        except DurableError as exc:
            self.message_user(request, f"Not cancelled: {exc}", messages.ERROR)
        else:
            self.log_change(request, run, f"Cancelled{f' (reason: {reason})' if reason else ''}")
            self.message_user(request, f"Run {run.pk} cancelled.", messages.SUCCESS)
        return HttpResponseRedirect(self._run_url(run.pk))

    def _cancel_confirmation(self, request: HttpRequest, run: Run) -> HttpResponse:
        children = Run.objects.filter(parent_id=run.pk).exclude(
            status__in=[s for s in RunStatus if s not in operations.CANCELLABLE]
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Are you sure?",
            "subtitle": f"Cancel run {run.pk}",
            "run": run,
            "cancellable": run.status in operations.CANCELLABLE,
            "unfinished_children": children.count(),
            "steps_done": Step.objects.filter(run_id=run.pk, status="completed").count(),
            "reason": request.POST.get("reason", "") if request.method == "POST" else "",
            "run_url": self._run_url(run.pk),
            "cancel_url": reverse(f"{self.admin_site.name}:celery_durable_run_cancel", args=[quote(run.pk)]),
        }
        return TemplateResponse(request, "admin/celery_durable/run/confirm_cancel.html", context)

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: replay one run from its failed step, a given step or the start (``replay_run``)."""
        if not (self.has_view_permission(request) and self.has_replay_permission(request)):
            raise PermissionDenied
        run = self._run_or_404(request, object_id)
        mode = request.POST.get("from", "failed")
        step_id = request.POST.get("step_id") or None
        before = earlier_outcome(run.status, run.error, run.cancel_reason)
        try:
            if mode == "start":
                operations.replay(run.pk, from_start=True)
            elif mode == "step":
                operations.replay(run.pk, from_step=step_id)
            else:
                operations.replay(run.pk)
        except DurableError as exc:
            self.message_user(request, f"Not replayed: {exc}", messages.ERROR)
        else:
            where = {"start": "from the start", "step": f"from step {step_id!r}"}.get(mode, "from the failed step")
            self.log_change(request, run, f"Replayed {where}; {before}")
            self.message_user(request, f"Run {run.pk} replayed {where}.", messages.SUCCESS)
        return HttpResponseRedirect(self._run_url(run.pk))

    def fork_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the fork form; POST: fork the run (``fork_run``) and go to the fork's page."""
        if not (self.has_view_permission(request) and self.has_fork_permission(request)):
            raise PermissionDenied
        run = self._run_or_404(request, object_id)
        choices = forks.fork_choices(run)
        error = ""
        if request.method == "POST":
            from_step = request.POST.get("from_step", "")
            args_text, kwargs_text = request.POST.get("args", ""), request.POST.get("kwargs", "")
            try:
                args, kwargs = forks.parse_arguments(args_text, kwargs_text)
                fork = actions.fork(run.pk, from_step or None, args, kwargs)
            except (DurableError, TypeError) as exc:  # TypeError: arguments the task does not take
                error = str(exc)
            else:
                if fork.forked_from_id != run.pk:  # an idempotency key or a debounce folded the call
                    self.message_user(
                        request,
                        f"Not forked: the task's flow control answered with run {fork.pk} (idempotency key or "
                        f"debounce); nothing was copied.",
                        messages.WARNING,
                    )
                    return HttpResponseRedirect(self._run_url(fork.pk))
                where = f"from step {from_step!r}" if from_step else "reusing every completed step"
                self.log_change(request, run, f"Forked into {fork.pk} {where}")
                self.log_change(request, fork, f"Forked from {run.pk} {where}")
                self.message_user(request, f"Run {run.pk} forked {where}: {fork.pk}.", messages.SUCCESS)
                return HttpResponseRedirect(self._run_url(fork.pk))
        else:
            from_step = ""
            args_text = json.dumps(json.loads(run.args), indent=2)
            kwargs_text = json.dumps(json.loads(run.kwargs), indent=2)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Fork run",
            "subtitle": f"Fork run {run.pk}",
            "run": run,
            "choices": choices,
            "from_step": from_step,
            "args_text": args_text,
            "kwargs_text": kwargs_text,
            "error": error,
            "run_url": self._run_url(run.pk),
            "fork_url": reverse(f"{self.admin_site.name}:celery_durable_run_fork", args=[quote(run.pk)]),
        }
        return TemplateResponse(request, "admin/celery_durable/run/fork.html", context, status=400 if error else 200)

    def history_context(self, run: Run) -> dict[str, Any]:
        """The run page's "History" section."""
        return {
            "history": history(run),
            "history_url": reverse(f"{self.admin_site.name}:celery_durable_run_history", args=[quote(run.pk)]),
        }
