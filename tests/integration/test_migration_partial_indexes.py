"""0017_partial_indexes: on PostgreSQL the flow-control indexes hold only their rows; elsewhere they stay whole."""

import importlib

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("celery_durable", "0016_fair_rounds")]
MIGRATION = importlib.import_module("celery_durable.migrations.0017_partial_indexes")
PARTIAL = [index.name for index, _ in MIGRATION.PARTIAL]
DATABASE_ONLY = [index.name for index in MIGRATION.DATABASE_ONLY]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def run_indexes() -> dict[str, str]:
    """Index name -> its definition (PostgreSQL) or its columns (others)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'celery_durable_run'")
            return dict(cursor.fetchall())
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, "celery_durable_run")
    return {name: ",".join(info["columns"]) for name, info in found.items() if info["index"]}


@pytest.fixture
def latest(transactional_db):
    yield
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_partial_on_postgresql_whole_elsewhere_and_reversible(latest):
    now = run_indexes()
    # Every database has the model's indexes and the database-only ones (SQLite's table rebuilds lost these).
    assert set(PARTIAL) | set(DATABASE_ONLY) <= set(now)
    forked_from = [name for name in now if name.startswith("celery_durable_run_forked_from_id_")]
    if connection.vendor == "postgresql":
        assert all(" WHERE " in now[name] for name in PARTIAL), now
        assert " WHERE " not in now["durable_run_published"]  # the sweeper's watermark reads every status
        assert len(forked_from) == 1 and now[forked_from[0]].endswith("WHERE (forked_from_id IS NOT NULL)")
        migrate(BEFORE)
        before = run_indexes()
        assert not any(" WHERE " in definition for definition in before.values()), before
        assert sorted(name for name in before if "forked_from" in name) == [forked_from[0], forked_from[0] + "_like"]
    else:
        assert forked_from  # the foreign key's index, as Django made it
        migrate(BEFORE)
        assert run_indexes() == now  # nothing to undo (0017 backwards leaves SQLite's restored indexes)
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    assert run_indexes() == now
