"""The migration history matches the models and runs both ways on a real PostgreSQL."""

from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from kernex_backend.core import migrations
from kernex_backend.core.db import create_engine
from kernex_backend.models import metadata
from kernex_backend.telemetry import partitions
from tests.conftest import MIGRATIONS_DIR, make_settings

pytestmark = pytest.mark.integration

EXPECTED_TABLES = {
    "api_keys",
    "audit_events",
    "bundles",
    "deployment_events",
    "deployment_executions",
    "deployments",
    "devices",
    "heartbeats",
    "presence_events",
    "webhook_deliveries",
    "webhook_events",
    "webhooks",
}


def _tables(connection: Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names()) - {"alembic_version"}


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts=migrations.COMPARE_OPTIONS)
    diff: list[Any] = compare_metadata(context, metadata)
    return diff


async def test_upgrade_downgrade_upgrade_on_empty_database(empty_database_url: str) -> None:
    engine = create_engine(make_settings(empty_database_url))
    try:
        assert await migrations.current_revision(engine) is None
        await migrations.upgrade(engine, MIGRATIONS_DIR)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == EXPECTED_TABLES
        head = await migrations.current_revision(engine)
        assert head is not None

        await migrations.downgrade(engine, MIGRATIONS_DIR, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        assert await migrations.current_revision(engine) is None

        await migrations.upgrade(engine, MIGRATIONS_DIR)
        assert await migrations.current_revision(engine) == head
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == EXPECTED_TABLES
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    try:
        # With partitions present, to prove they are filtered rather than reported as extra tables.
        async with engine.begin() as conn:
            await partitions.maintain(conn, today=date(2026, 1, 1), days_ahead=2, retention_days=30)
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
        assert diff == []
    finally:
        await engine.dispose()


async def test_autogenerate_would_notice_a_model_change(database_url: str) -> None:
    """The no-diff check above can fail: a column the database lacks shows up."""
    engine = create_engine(make_settings(database_url))
    extra = sa.Column("not_in_database", sa.Integer, nullable=True)
    devices = metadata.tables["devices"]
    devices.append_column(extra)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
        assert any(op[0] == "add_column" and op[3].name == "not_in_database" for op in diff)
    finally:
        devices._columns.remove(extra)  # restore the shared metadata for other tests
        await engine.dispose()


async def test_partitions_are_created_ahead_and_dropped_after_retention(database_url: str) -> None:
    engine = create_engine(make_settings(database_url))
    day0 = date(2026, 3, 1)
    try:
        async with engine.begin() as conn:
            result = await partitions.maintain(conn, today=day0, days_ahead=2, retention_days=5)
        assert result.created == [
            partitions.partition_name(day0 + timedelta(days=i)) for i in range(3)
        ]
        async with engine.begin() as conn:
            again = await partitions.maintain(conn, today=day0, days_ahead=2, retention_days=5)
        assert again.created == [] and again.dropped == []

        # Rows land in the partition of their day.
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO heartbeats (device_id, received_at, sequence, metrics) "
                    "VALUES ('dev-1', '2026-03-02T12:00:00+00:00', 1, '{}')"
                )
            )
            stored_in = (
                await conn.execute(sa.text("SELECT tableoid::regclass::text FROM heartbeats"))
            ).scalar_one()
        assert stored_in == partitions.partition_name(date(2026, 3, 2))

        later = day0 + timedelta(days=7)  # day0 and day0+1 are now older than 5 days
        async with engine.begin() as conn:
            result = await partitions.maintain(conn, today=later, days_ahead=2, retention_days=5)
        assert result.dropped == [
            partitions.partition_name(day0),
            partitions.partition_name(day0 + timedelta(days=1)),
        ]
        async with engine.connect() as conn:
            remaining = await partitions.existing_partitions(conn)
        assert partitions.partition_name(day0) not in remaining
        assert partitions.partition_name(later + timedelta(days=2)) in remaining
    finally:
        await engine.dispose()


async def test_partition_maintenance_runs_once_across_replicas(database_url: str) -> None:
    """While one replica holds the maintenance lock, another skips instead of racing it."""
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as first:
            held = await partitions.maintain(
                first, today=date(2026, 4, 1), days_ahead=0, retention_days=5
            )
            async with engine.begin() as second:
                skipped = await partitions.maintain(
                    second, today=date(2026, 4, 1), days_ahead=0, retention_days=5
                )
        assert held.ran and not skipped.ran
    finally:
        await engine.dispose()


async def test_concurrent_upgrades_run_one_after_another(empty_database_url: str) -> None:
    """The migration Job and several pods' init steps may all migrate at once: the advisory lock
    makes the first upgrade and the others wait, then find the schema at head."""
    import asyncio

    holder = create_engine(make_settings(empty_database_url))
    engines = [create_engine(make_settings(empty_database_url)) for _ in range(3)]
    try:
        async with holder.begin() as conn:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": migrations.MIGRATION_LOCK_KEY},
            )
            runs = [
                asyncio.create_task(migrations.upgrade(engine, MIGRATIONS_DIR))
                for engine in engines
            ]
            await asyncio.sleep(1.0)
            assert not any(run.done() for run in runs), "an upgrade ran past a held lock"
        await asyncio.gather(*runs)
        head = await migrations.current_revision(engines[0])
        assert head is not None
        async with engines[0].connect() as conn:
            assert await conn.run_sync(_tables) == EXPECTED_TABLES
    finally:
        for engine in (holder, *engines):
            await engine.dispose()
