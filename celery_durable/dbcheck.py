"""Missing migrations: a named error instead of the database's "relation does not exist".

``.delay()`` on a database where ``manage.py migrate`` has not run (or not since the last
upgrade) fails deep in the ORM with a driver error whose wording differs per database.
:func:`translated` turns such an error, when it concerns one of celery-durable's own
tables, into :class:`~celery_durable.exceptions.DurableNotMigrated` naming the command.
It reads only the error message: the failed transaction may not run another query.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.db import DatabaseError

from .exceptions import DurableNotMigrated

F = TypeVar("F", bound=Callable[..., Any])

# The wording of a missing table or column: PostgreSQL, SQLite, MySQL/MariaDB.
_MISSING = re.compile(
    r"does not exist|no such table|no such column|has no column named|doesn't exist|unknown column",
    re.IGNORECASE,
)
_TABLE = re.compile(r"celery_durable_[a-z_]+", re.IGNORECASE)


def _our_tables() -> set[str]:
    from django.apps import apps

    return {model._meta.db_table.lower() for model in apps.get_app_config("celery_durable").get_models()}


def not_migrated(exc: BaseException, using: str = "default") -> DurableNotMigrated | None:
    """The :class:`DurableNotMigrated` that ``exc`` means, or ``None`` if it is another error."""
    if not isinstance(exc, DatabaseError):
        return None
    message = str(exc)
    if not _MISSING.search(message):
        return None
    tables = _our_tables()
    named = [name for name in _TABLE.findall(message) if name.lower() in tables]
    if not named:
        return None
    return DurableNotMigrated(
        f"celery-durable's table {named[0]!r} is missing or out of date in database {using!r}: "
        f"run `python manage.py migrate` (the database said: {message.strip()})"
    )


def translated(fn: F) -> F:
    """Decorator: a database error about celery-durable's tables becomes ``DurableNotMigrated``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatabaseError as exc:
            error = not_migrated(exc, kwargs.get("using") or "default")
            if error is None:
                raise
            raise error from exc

    return cast(F, wrapper)
