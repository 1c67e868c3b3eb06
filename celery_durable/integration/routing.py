"""Broker priority for durable runs: a Celery router that ``install(app)`` puts in ``task_routes``.

A run's ``priority=`` (-600..600 seconds of head start) orders every backlog in the database.
Once its message is in the broker, the router maps the same number onto the broker's levels
so that a run with a head start is also fetched first from a crowded queue:

* RabbitMQ: ``0..task_queue_max_priority`` (higher first), linear; no level is sent while
  ``task_queue_max_priority`` is unset, because a queue without ``x-max-priority`` ignores it.
* Redis: ``0..9`` with 0 first; kombu groups them into its ``priority_steps`` lanes
  (``0, 3, 6, 9`` by default), so Redis orders coarsely.
* Other transports: no level.

The router only adds ``priority``; where a message goes is still decided by the routes the
project had configured, which it consults first, in order. An explicit
``apply_async(priority=...)`` wins over the mapping.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery
from celery.app.routes import prepare
from kombu import Connection
from kombu.utils.functional import maybe_evaluate

from ..exceptions import DurableError
from .publish import RESUME_HEADER
from .task import DurableTask

logger = logging.getLogger("celery_durable")

LOWEST, HIGHEST = -600, 600
# A resumed run (its sleep, wait, children or retry came due) goes ahead of first
# executions of the same priority: the top of the scale for a run of priority 0.
RESUME_HEAD_START = HIGHEST
REDIS_LEVELS = 9


@functools.lru_cache(maxsize=16)
def broker_driver(url: str) -> str:
    """``"amqp"``, ``"redis"`` or another kombu driver type for a broker URL (no connection made)."""
    return str(Connection(url).transport.driver_type)


def broker_level(priority: int, driver: str, max_priority: int | None) -> int | None:
    """The broker priority level for a run's ``priority``, or ``None`` where it means nothing."""
    share = (priority - LOWEST) / (HIGHEST - LOWEST)  # 0.0 (lowest) .. 1.0 (highest)
    if driver == "amqp":
        return int(share * max_priority + 0.5) if max_priority else None
    if driver == "redis":
        return int((1 - share) * REDIS_LEVELS + 0.5)
    return None


class DurablePriorityRouter:
    """Celery router: the project's routes decide the destination, the run's priority its level."""

    def __init__(self, app: Celery, routes: Any) -> None:
        self.app = app
        self.routes = routes
        self._prepared: list[Any] | None = None

    def __call__(self, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **kw: Any) -> Any:
        route = self._project_route(name, args, kwargs, options, task)
        if options.get("priority") is not None:
            return route
        task = task if task is not None else self.app.tasks.get(name)
        resume = bool((options.get("headers") or {}).get(RESUME_HEADER))
        level = self.level_for(task, args, kwargs, resume)
        if level is None:
            return route
        if route is None:
            return {"priority": level}
        if isinstance(route, str):
            return {"queue": route, "priority": level}
        if isinstance(route, dict):
            return {**route, "priority": level} if route.get("priority") is None else route
        return route

    def level_for(self, task: Any, args: Any, kwargs: Any, resume: bool = False) -> int | None:
        """The broker level for a run of ``task`` with these arguments (``None`` for plain tasks).

        A resume (the run executed before) gets ``RESUME_HEAD_START`` seconds more head start.
        """
        if not isinstance(task, DurableTask):
            return None
        try:
            priority = task.durable_spec.priority_of(tuple(args or ()), dict(kwargs or {}))
        except DurableError:  # refused at .delay() already; a republication keeps the default
            priority = 0
        if resume:
            priority = min(HIGHEST, priority + RESUME_HEAD_START)
        conf = self.app.conf
        return broker_level(priority, broker_driver(str(conf.broker_url)), conf.task_queue_max_priority)

    def _project_route(self, name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any) -> Any:
        if self._prepared is None:
            self._prepared = list(prepare(self.routes))
        for router in self._prepared:
            router = maybe_evaluate(router)
            if hasattr(router, "route_for_task"):  # a pre-4.0 router class
                route = router.route_for_task(name, args, kwargs)
            else:
                route = router(name, args, kwargs, options, task=task)
            if route is not None:
                return route
        return None


def install_router(app: Celery) -> None:
    """Put a :class:`DurablePriorityRouter` in front of the app's ``task_routes``."""
    routes = app.conf.task_routes
    if any(isinstance(route, DurablePriorityRouter) for route in _as_list(routes)):
        return
    app.conf.task_routes = (DurablePriorityRouter(app, routes),)
    if "amqp" in app.__dict__:  # routes already prepared by an earlier publish: prepare again
        app.amqp.flush_routes()
        app.amqp.__dict__.pop("router", None)


def router_installed(app: Celery) -> bool:
    """Whether the app's ``task_routes`` still start with celery-durable's router."""
    routes = _as_list(app.conf.task_routes)
    return bool(routes) and isinstance(routes[0], DurablePriorityRouter)


def _as_list(routes: Any) -> list[Any]:
    if routes is None:
        return []
    return list(routes) if isinstance(routes, list | tuple) else [routes]
