"""Hot statements whose SQL Django's compiler writes once per thread and database, run with new values.

Building a queryset and compiling it costs Django ~0.1-0.3 ms of CPU per statement, paid
again on every call with only a key changed. On the per-key hand-over path (every
completion of a limited run) that was a larger share than the statements themselves.
:class:`CompiledSelect` builds the queryset once with placeholder values, lets the compiler
write its SQL, remembers which parameters were the placeholders, and then executes that SQL
with the call's values on the connection's cursor (``execute_wrapper`` and the debug cursor
see it) and converts the rows with the same compiler's converters, as ``values_list()``
would. :class:`CompiledUpdate` does the same for ``queryset.update(...)``. The SQL is the
compiler's own, so it follows the model and the database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple, cast

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.db.models.sql import Query, UpdateQuery
from django.db.models.sql.compiler import SQLCompiler


class _Compiled(NamedTuple):
    compiler: SQLCompiler
    sql: str
    params: tuple[Any, ...]
    #: For each placeholder value, the indexes of the parameters it became.
    positions: tuple[tuple[int, ...], ...]


def _prepared(value: Any, connection: BaseDatabaseWrapper) -> Any:
    """A value as the compiler passes it: an aware datetime adapted as a datetime field does."""
    return connection.ops.adapt_datetimefield_value(value) if isinstance(value, datetime) else value


class _CompiledStatement:
    """What the compiled statements share: the placeholders, the per-thread cache, the parameters."""

    def __init__(self, placeholders: tuple[Any, ...]) -> None:
        self.placeholders = placeholders
        self._local = threading.local()

    def _query(self, *values: Any) -> Query:
        raise NotImplementedError

    def _execute(self, values: tuple[Any, ...], using: str) -> tuple[_Compiled, Any]:
        """Execute the compiled SQL with ``values``; the compiled statement and its cursor (still open)."""
        if len(values) != len(self.placeholders):
            raise TypeError(f"expected {len(self.placeholders)} values, got {len(values)}")
        compiled = self._compiled(using)
        connection = compiled.compiler.connection
        params = list(compiled.params)
        for value, indexes in zip(values, compiled.positions, strict=True):
            for index in indexes:
                params[index] = _prepared(value, connection)
        cursor = connection.cursor()
        try:
            cursor.execute(compiled.sql, params)
        except BaseException:
            cursor.close()
            raise
        return compiled, cursor

    def _compiled(self, using: str) -> _Compiled:
        cache: dict[str, _Compiled] = self._local.__dict__.setdefault("by_alias", {})
        compiled = cache.get(using)
        # The compiler converts with its connection: compile again if the alias's wrapper changed.
        if compiled is None or compiled.compiler.connection is not connections[using]:
            compiled = cache[using] = self._compile(using)
        return compiled

    def _compile(self, using: str) -> _Compiled:
        compiler = self._query(*self.placeholders).get_compiler(using=using)
        sql, params = compiler.as_sql()
        positions = tuple(
            tuple(index for index, param in enumerate(params) if param == _prepared(placeholder, compiler.connection))
            for placeholder in self.placeholders
        )
        if not all(positions):
            raise RuntimeError(f"a placeholder is not a parameter of the compiled query: {sql}")
        return _Compiled(compiler, sql, tuple(params), positions)


class CompiledSelect(_CompiledStatement):
    """``build(*values)`` (a ``values_list()`` queryset) compiled once per thread and database alias.

    ``placeholders`` are values of the types the call passes (strings for keys, aware
    datetimes), each distinct from every other parameter of the query, so their places in the
    compiled parameters are found by equality. A placeholder that the compiler did not pass
    as a parameter (folded into the SQL) raises ``RuntimeError`` at the first call.
    """

    def __init__(self, build: Callable[..., QuerySet[Any, Any]], *placeholders: Any) -> None:
        super().__init__(placeholders)
        self.build = build

    def _query(self, *values: Any) -> Query:
        return self.build(*values).query

    def rows(self, *values: Any, using: str = "default") -> list[tuple[Any, ...]]:
        """The query's rows for ``values`` (one per placeholder), converted as ``values_list()`` does."""
        compiled, cursor = self._execute(values, using)
        with cursor:
            fetched = cursor.fetchall()
        return [tuple(row) for row in compiled.compiler.results_iter(results=[fetched], tuple_expected=True)]


class CompiledUpdate(_CompiledStatement):
    """``queryset.update(**changes)`` from ``build(*values) -> (queryset, changes)``, compiled once.

    The placeholders follow :class:`CompiledSelect`'s rules, in the filter and in the changes.
    """

    def __init__(self, build: Callable[..., tuple[QuerySet[Any, Any], dict[str, Any]]], *placeholders: Any) -> None:
        super().__init__(placeholders)
        self.build = build

    def _query(self, *values: Any) -> Query:
        queryset, changes = self.build(*values)
        query = cast(UpdateQuery, queryset.query.chain(UpdateQuery))
        query.add_update_values(changes)
        return query

    def count(self, *values: Any, using: str = "default") -> int:
        """Execute the UPDATE for ``values``; the number of rows it changed (as ``update()`` returns)."""
        _compiled, cursor = self._execute(values, using)
        with cursor:
            return int(cursor.rowcount)
