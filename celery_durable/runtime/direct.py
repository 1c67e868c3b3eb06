"""What a direct call (``task(...)``, or Celery's eager mode) can run: a body that never suspends.

A direct call has no run row, so a sleep, a wait or child runs cannot be resumed. The body's
source is read once to find its suspending steps, so that such a call fails before any step
ran (and before any side effect); a suspension the source does not show (a helper function
that sleeps) is refused when it is reached.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from functools import cache
from typing import Any

#: The step methods that suspend a run.
SUSPENDING = frozenset({"sleep", "sleep_until", "wait_for_event", "invoke", "gather", "chain"})


@cache
def suspending_steps(fn: Callable[..., Any]) -> tuple[tuple[str, int], ...]:
    """``(step method, line)`` of each suspending step the body of ``fn`` calls, by its source.

    Calls on ``step`` or ``self.step`` count. Empty if there are none or the source is not available.
    """
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    try:
        lines, first = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return ()
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr in SUSPENDING and _is_step(node.func.value):
            found.append((node.func.attr, first + node.lineno - 1))
    return tuple(sorted(found, key=lambda item: item[1]))


def _is_step(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "step"
    return isinstance(node, ast.Attribute) and node.attr == "step"
