"""Backups for real: a database filled through the API is dumped with pg_dump, dropped,
restored with pg_restore, and every row of every table (the audit log included) comes back;
restores that would corrupt a database are refused with a clear error."""

import asyncio
import datetime as dt
import os
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from kernex_backend import backups
from kernex_backend.core import migrations
from kernex_backend.core.db import create_engine
from kernex_devstack.postgres import postgres_bin_dir
from tests.conftest import MIGRATIONS_DIR, PostgresAdmin, make_settings

# The embedded server's own tools match its version; an external test server uses PATH's.
PG_BIN = None if os.environ.get("KERNEX_TEST_DATABASE_URL") else postgres_bin_dir()


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fingerprint(url: str) -> dict[str, tuple[int, str]]:
    """Every public table's row count and a digest of all its rows."""
    connection = await asyncpg.connect(_dsn(url))
    try:
        tables = [
            r["tablename"]
            for r in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        out = {}
        for table in tables:
            row = await connection.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS d FROM \"{table}\" t"  # noqa: E501 - names from the catalogue
            )
            out[table] = (row["n"], row["d"])
        return out
    finally:
        await connection.close()


async def settled_outbox(url: str) -> None:
    connection = await asyncpg.connect(_dsn(url))
    try:
        for _ in range(100):
            pending = await connection.fetchval(
                "SELECT count(*) FROM webhook_events WHERE NOT fanned_out"
            )
            if pending == 0:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the webhook outbox was not handled within 10 s")
    finally:
        await connection.close()


async def fill_through_the_api(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for n in range(6):
        created = await client.post(
            "/api/v1/devices",
            json={"id": f"backup-{n}", "device_type": "gateway", "tags": {"site": f"s{n % 2}"}},
            headers=headers,
        )
        assert created.status_code == 201, created.text
    patched = await client.patch(
        "/api/v1/devices/backup-0", json={"tags": {"site": "moved"}}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    key = await client.post(
        "/api/v1/api-keys", json={"name": "ops", "scopes": ["read"]}, headers=headers
    )
    assert key.status_code == 201, key.text


async def test_backup_drop_restore_brings_every_row_back(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    database_url: str,
    postgres_admin: PostgresAdmin,
    tmp_path: Path,
) -> None:
    await fill_through_the_api(client, admin_headers)
    # The app's webhook dispatcher marks new outbox events as handled within a second: let it,
    # so that it does not change a row between this fingerprint and the dump.
    await settled_outbox(database_url)
    before = await fingerprint(database_url)
    assert before["devices"][0] == 6 and before["audit_events"][0] >= 8

    dump = backups.backup(database_url, tmp_path / "backups", pg_bin=PG_BIN)
    assert dump.stat().st_mode & 0o777 == 0o600
    head = await _head()
    assert dump.name.endswith(f"-{head}.dump")

    name = make_url(database_url).database
    assert name
    await postgres_admin.drop(name)
    await postgres_admin.create(name)
    assert await fingerprint(database_url) == {}

    assert backups.restore(dump, database_url, migrations_dir=MIGRATIONS_DIR, pg_bin=PG_BIN) == head
    assert await fingerprint(database_url) == before

    # A second restore over it is refused, and changes nothing.
    with pytest.raises(backups.BackupError, match="not empty"):
        backups.restore(dump, database_url, migrations_dir=MIGRATIONS_DIR, pg_bin=PG_BIN)
    assert await fingerprint(database_url) == before


async def _head() -> str:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrations.alembic_config(MIGRATIONS_DIR))
    head = scripts.get_current_head()
    assert head
    return head


async def test_restore_into_a_newer_schema_is_refused(
    database_url: str, postgres_admin: PostgresAdmin, tmp_path: Path
) -> None:
    """A backup from one migration back, restored over a database at head: refused, untouched."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrations.alembic_config(MIGRATIONS_DIR))
    previous = scripts.get_revision(await _head()).down_revision
    assert isinstance(previous, str)
    old_name = f"kernex_old_{uuid.uuid4().hex[:10]}"
    old_url = await postgres_admin.create(old_name)
    try:
        engine = create_engine(make_settings(old_url))
        await migrations.upgrade(engine, MIGRATIONS_DIR, previous)
        await engine.dispose()
        old_dump = backups.backup(old_url, tmp_path, pg_bin=PG_BIN)
    finally:
        await postgres_admin.drop(old_name)
    before = await fingerprint(database_url)
    with pytest.raises(backups.BackupError, match=f"newer than the backup's {previous}"):
        backups.restore(old_dump, database_url, migrations_dir=MIGRATIONS_DIR, pg_bin=PG_BIN)
    assert await fingerprint(database_url) == before


def test_a_file_that_is_no_dump_is_refused(tmp_path: Path, database_url: str) -> None:
    bogus = tmp_path / "kernex-20260101T000000Z-x.dump"
    bogus.write_bytes(b"not a dump")
    with pytest.raises(backups.BackupError, match="not a readable pg_dump archive"):
        backups.restore(bogus, database_url, migrations_dir=MIGRATIONS_DIR, pg_bin=PG_BIN)


def test_retention_keeps_recent_dumps_and_always_the_newest(tmp_path: Path) -> None:
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    names = [
        f"kernex-{(now - dt.timedelta(days=d)).strftime('%Y%m%dT%H%M%SZ')}-abc.dump"
        for d in (1, 5, 9, 20)
    ]
    for name in [*names, "notes.txt"]:
        (tmp_path / name).write_text("x")
    deleted = backups.prune(tmp_path, keep_days=7, now=now)
    assert sorted(p.name for p in deleted) == sorted(names[2:])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[:2], "notes.txt"])
    # Every dump older than the window, yet the newest stays.
    assert backups.prune(tmp_path, keep_days=7, now=now + dt.timedelta(days=30)) == [
        tmp_path / names[1]
    ]
