"""`kernex-backend`: serve the API, run the MQTT worker, migrate the database, create API keys."""

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from kernex_backend import bootstrap
from kernex_backend.core.config import Settings, get_settings
from kernex_backend.core.logging import configure_logging
from kernex_backend.core.scopes import Scope

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log.level, settings.log.json_output)
    return settings


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="bind address (default: KERNEX_API__HOST)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default: KERNEX_API__PORT)")] = None,
) -> None:
    """Serve the REST API."""
    import uvicorn

    from kernex_backend.main import create_app

    settings = _settings()
    api = settings.api
    uvicorn.run(
        create_app(settings),
        host=host or api.host,
        port=port or api.port,
        log_config=None,  # keep our structlog configuration
        proxy_headers=bool(api.forwarded_allow_ips),
        forwarded_allow_ips=api.forwarded_allow_ips or None,
        server_header=False,
        ssl_certfile=api.tls_cert_file,
        ssl_keyfile=api.tls_key_file,
    )


# How often a worker's event loop marks itself alive, and how old a mark the probe accepts.
LIVENESS_INTERVAL_S = 5.0
LIVENESS_MAX_AGE_S = 60.0


def _probe_liveness_file(path: Path, max_age_s: float) -> None:
    import time

    try:
        age = time.time() - path.stat().st_mtime
    except OSError as exc:
        typer.echo(f"unhealthy: no liveness mark at {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    if age > max_age_s:
        typer.echo(
            f"unhealthy: {path} last marked {age:.0f} s ago (limit {max_age_s:.0f})", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"healthy: {path} marked {age:.0f} s ago")


@app.command()
def probe(
    path: Annotated[str, typer.Option(help="what to ask the local server")] = "/api/v1/health",
    liveness_file: Annotated[
        Path | None,
        typer.Option(help="check a worker's liveness mark (`worker --liveness-file`) instead"),
    ] = None,
    max_age_s: Annotated[
        float, typer.Option(help="with --liveness-file: the oldest mark that counts as alive")
    ] = LIVENESS_MAX_AGE_S,
) -> None:
    """Exit 0 if the API served on this host answers 200 (for a container HEALTHCHECK), or,
    with --liveness-file, if a worker's event loop marked itself alive recently.

    Talks to 127.0.0.1 on the configured port, over HTTPS when TLS is configured (without
    verifying the certificate: this checks our own process, not the network path)."""
    import ssl
    import urllib.error
    import urllib.request

    if liveness_file is not None:
        _probe_liveness_file(liveness_file, max_age_s)
        return
    api = _settings().api
    scheme = "https" if api.tls_cert_file else "http"
    context = None
    if api.tls_cert_file:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://127.0.0.1:{api.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        typer.echo(f"unhealthy: {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    if status != 200:
        typer.echo(f"unhealthy: {url} answered {status}", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy: {url} answered 200")


async def _mark_alive(path: Path) -> None:
    """Touch `path` from the event loop itself: a loop that is stuck stops touching it."""
    while True:
        path.touch()  # noqa: ASYNC240 - in the loop on purpose; a tmpfs touch takes microseconds
        await asyncio.sleep(LIVENESS_INTERVAL_S)


async def _work(settings: Settings, liveness_file: Path | None) -> None:
    import signal

    from kernex_backend import composition

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with composition.running(settings, serve_api=False):
        typer.echo(f"worker running (share group {settings.mqtt.share_group}); Ctrl-C stops it")
        marker = asyncio.create_task(_mark_alive(liveness_file)) if liveness_file else None
        try:
            await stop.wait()
        finally:
            if marker is not None:
                marker.cancel()


@app.command()
def worker(
    liveness_file: Annotated[
        Path | None,
        typer.Option(help="touch this file every few seconds (for `probe --liveness-file`)"),
    ] = None,
) -> None:
    """Run the MQTT bridge and fleet-state jobs without the API (scale them separately)."""
    settings = _settings()
    if not settings.mqtt.enabled:
        typer.echo("configuration error: the worker needs KERNEX_MQTT__ENABLED=true", err=True)
        raise typer.Exit(2)
    asyncio.run(_work(settings, liveness_file))


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    revision = asyncio.run(bootstrap.migrate(_settings()))
    typer.echo(f"database at revision {revision}")


@app.command("create-api-key")
def create_api_key(
    name: Annotated[str, typer.Option(help="a label for the key")],
    scope: Annotated[list[Scope], typer.Option(help="repeat for several")] = [Scope.ADMIN],  # noqa: B006
    replace: Annotated[
        bool, typer.Option(help="revoke live keys with the same name first")
    ] = False,
) -> None:
    """Create an API key and print its token (shown only this once)."""
    token = asyncio.run(
        bootstrap.create_api_key(_settings(), name=name, scopes=scope, replace=replace, actor="cli")
    )
    typer.echo(token)


@app.command("revoke-api-key")
def revoke_api_key(
    name: Annotated[str, typer.Option(help="revoke every live key so named")],
) -> None:
    """Revoke API keys by name (for one-shot jobs that made a key for themselves)."""
    count = asyncio.run(bootstrap.revoke_api_keys(_settings(), name=name, actor="cli"))
    typer.echo(f"revoked {count} key(s) named {name}")


PgBin = Annotated[
    Path | None,
    typer.Option(help="folder of pg_dump/pg_restore/psql (at least the server's version)"),
]


@app.command()
def backup(
    out: Annotated[Path, typer.Option(help="folder for kernex-<time>-<revision>.dump files")],
    keep_days: Annotated[
        int | None, typer.Option(min=1, help="delete older dumps there (never the newest)")
    ] = None,
    upload: Annotated[bool, typer.Option(help="also copy it to the S3 bucket")] = False,
    pg_bin: PgBin = None,
) -> None:
    """Back the database up (pg_dump custom format, compressed)."""
    from kernex_backend import backups

    settings = _settings()
    try:
        path = backups.backup(
            settings.database_url.get_secret_value(), out, keep_days=keep_days, pg_bin=pg_bin
        )
        typer.echo(f"backup written: {path} ({path.stat().st_size} bytes)")
        if upload:
            typer.echo(f"uploaded as {backups.upload(path, settings.storage)}")
    except backups.BackupError as exc:
        typer.echo(f"backup failed: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def restore(
    dump: Annotated[Path, typer.Argument(help="a kernex-*.dump file", exists=True)],
    pg_bin: PgBin = None,
) -> None:
    """Restore a backup into the configured database, which must be empty (refuses a
    database at a newer migration, and a backup from a newer Kernex)."""
    from kernex_backend import backups

    settings = _settings()
    try:
        revision = backups.restore(
            dump,
            settings.database_url.get_secret_value(),
            migrations_dir=settings.migrations_dir,
            pg_bin=pg_bin,
        )
    except backups.BackupError as exc:
        typer.echo(f"restore refused: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored {dump.name} (migration {revision}); run `kernex-backend migrate` next")


async def _retention(settings: Settings, days: int, dry_run: bool) -> None:
    import datetime as dt

    from kernex_backend.bundles.retention import run_retention
    from kernex_backend.bundles.storage import create_storage
    from kernex_backend.core.db import create_engine, create_sessionmaker

    engine = create_engine(settings)
    try:
        report = await run_retention(
            sessionmaker=create_sessionmaker(engine),
            storage=create_storage(settings.storage),
            older_than=dt.timedelta(days=days),
            dry_run=dry_run,
        )
    finally:
        await engine.dispose()
    if not report.ran:
        typer.echo("another replica is running retention right now; nothing done")
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {len(report.deleted)}: {', '.join(report.deleted) or '-'}")
    typer.echo(f"kept (unfinished deployments): {', '.join(report.kept_in_use) or '-'}")
    typer.echo(f"kept (installed on devices): {', '.join(report.kept_installed) or '-'}")


@app.command("bundles-retention")
def bundles_retention(
    days: Annotated[int, typer.Option(min=1, help="delete unused bundles older than this")],
    dry_run: Annotated[bool, typer.Option(help="report only")] = False,
) -> None:
    """Delete old bundles that no unfinished deployment uses and no device has installed."""
    asyncio.run(_retention(_settings(), days, dry_run))


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
