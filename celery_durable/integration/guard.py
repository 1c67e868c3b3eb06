"""``install(app)`` forgotten: say so loudly, in ``manage.py check`` and in the worker's log.

Without ``install(app)`` a worker runs durable tasks but no waker, sweeper or reaper:
sleeping runs never wake and lost messages are never republished. Both surfaces look for
durable tasks after importing the project's task modules the way Celery's worker does
(``imports``/``include`` and each installed Django app's ``tasks`` module), so the result
does not depend on which modules happened to be imported before.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from celery import Celery, signals

from ..engine.spec import TaskSpec

logger = logging.getLogger("celery_durable")

_importing = False


def import_task_modules(app: Celery) -> None:
    """Import the app's task modules: ``imports``, ``include``, and ``<django app>.tasks``.

    What the worker imports at startup (``app.loader.import_default_modules()`` and
    ``app.autodiscover_tasks()``), done directly: calling the loader from a system check
    would run the checks again (Celery's Django fix-up runs them on ``import_modules``).
    Errors propagate (the caller reports them).
    """
    global _importing
    if _importing:
        return
    _importing = True
    try:
        for name in [*(app.conf.imports or ()), *(app.conf.include or ())]:
            importlib.import_module(name)
        from django.apps import apps

        if apps.ready:
            from celery.loaders.base import find_related_module  # type: ignore[attr-defined]

            # As the worker's autodiscovery does: a missing ``tasks`` module is skipped (on
            # Django < 6.0 ``celery_durable.tasks``, the django.tasks backend, is one).
            for config in apps.get_app_configs():
                find_related_module(config.name, "tasks")
    finally:
        _importing = False


def installed(app: Celery) -> bool:
    """Whether ``celery_durable.install(app)`` was called on ``app``."""
    return bool(getattr(app, "_celery_durable_installed", False))


def durable_task_names(app: Celery) -> list[str]:
    """The names of the durable tasks registered on ``app``, sorted."""
    return sorted(name for name, task in app.tasks.items() if isinstance(getattr(task, "durable_spec", None), TaskSpec))


def is_celery_default_app(app: Celery) -> bool:
    """Whether ``app`` is Celery's fallback app (the project's own app was never created).

    ``celery._state`` creates it as ``Celery("default", fixups=[])`` when no app exists.
    """
    return app.main == "default" and not getattr(app, "fixups", None)


def missing_install_message(app: Celery, names: list[str]) -> str:
    """The sentence both the check and the worker say."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"durable tasks ({shown}) are registered on Celery app {app.main or 'default'!r}, "
        f"but celery_durable.install(app) was not called on it: workers run no waker, sweeper "
        f"or reaper, so sleeping runs never wake and lost messages are never republished"
    )


def missing_install_hint(app: Celery) -> str:
    """How to fix it."""
    hint = "Call celery_durable.install(app) in your Celery module, after config_from_object()."
    if is_celery_default_app(app):
        hint += (
            " The current Celery app is Celery's default app: Django never imported yours. Add "
            "'from .celery import app as celery_app' to proj/__init__.py."
        )
    return hint


def report_missing_install(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """``celeryd_after_setup``: a worker of an app without ``install(app)`` logs an ERROR."""
    app = getattr(instance, "app", None)
    if app is None or installed(app):
        return
    names = durable_task_names(app)
    if names:
        logger.error("%s. %s", missing_install_message(app, names), missing_install_hint(app))


# Sent once the worker's logging is set up and its task modules are imported, before the banner.
signals.celeryd_after_setup.connect(report_missing_install, weak=False, dispatch_uid="celery_durable.guard")
