"""The context-bound ``step`` proxy."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, cast

from ..exceptions import NotInDurableRun

if TYPE_CHECKING:
    from .steps import StepContext

_current: ContextVar[StepContext | None] = ContextVar("celery_durable_step", default=None)


def current() -> StepContext:
    """The step context of the running durable execution, or raise ``NotInDurableRun``."""
    ctx = _current.get()
    if ctx is None:
        raise NotInDurableRun()
    return ctx


def activate(ctx: StepContext) -> Token[StepContext | None]:
    """Make ``ctx`` the current step context; pass the token to :func:`deactivate`."""
    return _current.set(ctx)


def deactivate(token: Token[StepContext | None]) -> None:
    """Restore the step context that was current before :func:`activate`."""
    _current.reset(token)


class StepProxy:
    """``celery_durable.step``: forwards to the step context of the current run.

    Outside a durable run every attribute raises :class:`NotInDurableRun`.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(current(), name)

    def __repr__(self) -> str:
        ctx = _current.get()
        return "<step (outside a durable run)>" if ctx is None else f"<step of run {ctx.run_id}>"


step = cast("StepContext", StepProxy())
