"""Database backups an operator can restore: pg_dump's custom format (compressed, restorable
table by table), named by time and schema revision, kept for N days, optionally copied to S3;
and a restore that refuses what would corrupt a database.

pg_dump and pg_restore must be at least the server's major version: `pg_bin` names their
folder when the ones on PATH are older. The password goes to them through PGPASSWORD, never on
a command line that `ps` shows.
"""

import datetime as dt
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from alembic.script import ScriptDirectory

from kernex_backend.core.config import StorageSettings
from kernex_backend.core.migrations import alembic_config

PREFIX = "kernex-"
SUFFIX = ".dump"
_NAME_RE = re.compile(r"^kernex-(\d{8}T\d{6}Z)-([0-9a-z_]+)\.dump$")
_COPY_RE = re.compile(r"^COPY [\w.\"]*alembic_version \(version_num\) FROM stdin;\n(\w+)\n", re.M)


class BackupError(Exception):
    """A backup or restore that cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Connection:
    """libpq parameters from our SQLAlchemy URL."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def from_url(cls, url: str) -> "Connection":
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"),
        )

    def args(self, database: str | None = None) -> list[str]:
        return [
            f"--host={self.host}",
            f"--port={self.port}",
            f"--username={self.user}",
            f"--dbname={database or self.database}",
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}


def _tool(name: str, pg_bin: Path | None) -> str:
    found = str(pg_bin / name) if pg_bin else shutil.which(name)
    if not found or not Path(found).exists():
        raise BackupError(f"{name} not found; install postgresql-client or pass --pg-bin")
    return found


def _run(command: list[str], connection: Connection) -> str:
    done = subprocess.run(  # noqa: S603 - fixed tools, arguments we built
        command, env=connection.env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def dump_revision(dump: Path, *, pg_bin: Path | None = None) -> str | None:
    """The Alembic revision recorded inside a dump (None: the dump has no Kernex schema)."""
    command = [_tool("pg_restore", pg_bin), "--data-only", "--table=alembic_version", "-f", "-"]
    done = subprocess.run(  # noqa: S603
        [*command, str(dump)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"{dump} is not a readable pg_dump archive: {done.stderr.strip()}")
    match = _COPY_RE.search(done.stdout)
    return match.group(1) if match else None


def database_revision(connection: Connection, *, pg_bin: Path | None = None) -> str | None:
    """The target database's revision; None when it has no Kernex schema (empty)."""
    psql = [_tool("psql", pg_bin), *connection.args(), "-tAc"]
    exists = _run([*psql, "SELECT to_regclass('public.alembic_version') IS NOT NULL"], connection)
    if exists.strip() != "t":
        return None
    return _run([*psql, "SELECT max(version_num) FROM alembic_version"], connection).strip() or None


def _tables(connection: Connection, pg_bin: Path | None) -> int:
    sql = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    return int(_run([_tool("psql", pg_bin), *connection.args(), "-tAc", sql], connection))


def backup(
    database_url: str,
    out_dir: Path,
    *,
    keep_days: int | None = None,
    pg_bin: Path | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """Dump the database into `out_dir`; with `keep_days`, delete older Kernex dumps there.

    Written to a temporary name and renamed, so a dump that failed halfway never looks like
    a backup."""
    connection = Connection.from_url(database_url)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    revision = database_revision(connection, pg_bin=pg_bin) or "empty"
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / f"{PREFIX}{stamp}-{revision}{SUFFIX}"
    partial = target.with_suffix(".partial")
    command = [_tool("pg_dump", pg_bin), *connection.args(), "--format=custom", "--compress=6"]
    try:
        _run([*command, f"--file={partial}"], connection)
        partial.chmod(0o600)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    if keep_days is not None:
        prune(out_dir, keep_days=keep_days, now=now)
    return target


def prune(out_dir: Path, *, keep_days: int, now: dt.datetime | None = None) -> list[Path]:
    """Delete Kernex dumps older than `keep_days` (by the time in their names); never the
    newest one, so a stopped backup job does not end with no backup at all."""
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=keep_days)
    dumps = sorted(
        (dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC), path)
        for path in out_dir.glob(f"{PREFIX}*{SUFFIX}")
        if (m := _NAME_RE.match(path.name))
    )
    deleted = []
    for taken, path in dumps[:-1]:
        if taken < cutoff:
            path.unlink()
            deleted.append(path)
    return deleted


def restore(
    dump: Path,
    database_url: str,
    *,
    migrations_dir: Path,
    pg_bin: Path | None = None,
) -> str:
    """Restore `dump` into the database; returns the restored revision.

    Refused: a dump from a newer Kernex than this one (unknown revision); a database at a newer
    revision than the dump (restoring would leave a schema the code below it does not expect);
    a database that is not empty (drop and re-create it, or name a new one: pg_restore's
    --clean cannot replace partitioned tables). Runs in one transaction: a failed restore
    leaves the database empty, as it was."""
    connection = Connection.from_url(database_url)
    revision = dump_revision(dump, pg_bin=pg_bin)
    if revision is None:
        raise BackupError(f"{dump} holds no Kernex schema (no alembic_version)")
    scripts = ScriptDirectory.from_config(alembic_config(migrations_dir))
    known = [script.revision for script in scripts.walk_revisions()]  # newest first
    if revision not in known:
        raise BackupError(
            f"the backup is at migration {revision}, which this Kernex does not know: "
            "restore it with the Kernex version that made it"
        )
    current = database_revision(connection, pg_bin=pg_bin)
    if current is not None and current in known and known.index(current) < known.index(revision):
        raise BackupError(
            f"the database is at migration {current}, newer than the backup's {revision}: "
            "restore into an empty database, then run `kernex-backend migrate`"
        )
    if current is not None or _tables(connection, pg_bin):
        raise BackupError(
            f"the database {connection.database} is not empty: drop and re-create it, or "
            "restore into a new database"
        )
    command = [_tool("pg_restore", pg_bin), *connection.args(), "--no-owner", "--exit-on-error"]
    command += ["--single-transaction"]
    _run([*command, str(dump)], connection)
    return revision


def upload(path: Path, storage: StorageSettings, *, prefix: str = "backups/") -> str:
    """Copy a dump to the S3 bucket the backend uses (or the one named in `storage`); returns
    the object name. Bundles and backups share credentials, not prefixes."""
    from kernex_backend.bundles.storage import s3_client

    name = prefix + path.name
    s3_client(storage).fput_object(storage.bucket, name, str(path))
    return name
