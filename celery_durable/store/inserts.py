"""One model row inserted with a statement that Django's compiler wrote once per model and database.

``Model.objects.create()`` builds a model instance, sends the save signals and compiles its
``INSERT`` on every call: for a run's 41 columns ~0.4 ms of CPU, the largest share of a
durable ``.delay()`` after Celery's own publish. The statement here comes from that same
compiler, once, from the model's concrete fields, so it cannot drift from the model; a call
only converts the values (``get_db_prep_save``, as the compiler does) and executes it on
the connection's cursor (``execute_wrapper`` and the debug cursor see it). As with
``bulk_create()``, no ``pre_save``/``post_save`` signal is sent.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from django.db import connections
from django.db.models import Field, Model
from django.db.models.sql import InsertQuery


class _Insert(NamedTuple):
    sql: str
    fields: tuple[Field[Any, Any], ...]
    attnames: frozenset[str]
    #: Each field's default as the database takes it, converted once (``None``: a callable default).
    converted_defaults: tuple[tuple[Any] | None, ...]


_compiled: dict[tuple[type[Model], str], _Insert] = {}


def insert_row(model: type[Model], values: dict[str, Any], using: str = "default") -> None:
    """``INSERT`` one row of ``model``: ``values`` by field attname, the fields' defaults for the rest.

    Raises ``TypeError`` for a name that is no field of the model, and the database's
    ``IntegrityError`` (Django's) as ``create()`` would.
    """
    insert = _compiled.get((model, using)) or _compile(model, using)
    unknown = values.keys() - insert.attnames
    if unknown:
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    connection = connections[using]
    params = [
        field.get_db_prep_save(values[field.attname], connection)
        if field.attname in values
        else (default[0] if default is not None else field.get_db_prep_save(field.get_default(), connection))
        for field, default in zip(insert.fields, insert.converted_defaults, strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(insert.sql, params)


def _compile(model: type[Model], using: str) -> _Insert:
    """The model's ``INSERT`` of every concrete field, one placeholder each, by Django's compiler."""
    fields = tuple(model._meta.concrete_fields)
    query = InsertQuery(model)
    query.insert_values(fields, [model()])
    statements = query.get_compiler(using=using).as_sql()
    if len(statements) != 1 or len(statements[0][1]) != len(fields):
        raise RuntimeError(f"the INSERT of {model.__name__} does not take one value per field: {statements!r}")
    connection = connections[using]
    defaults = tuple(
        None if callable(field.default) else (field.get_db_prep_save(field.get_default(), connection),)
        for field in fields
    )
    insert = _Insert(statements[0][0], fields, frozenset(field.attname for field in fields), defaults)
    _compiled[(model, using)] = insert
    return insert
