"""`kernex bundles`: upload (with the signature `kernex-release sign` wrote), list, show, remove."""

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

from kernex_cli.render import human_bytes
from kernex_cli.session import session

app = typer.Typer(help="Signed software bundles.", no_args_is_help=True)

CHUNK = 1024 * 1024
COLUMNS = (
    ("ID", lambda b: b["id"]),
    ("NAME", lambda b: b["name"]),
    ("VERSION", lambda b: b["version"]),
    ("TYPE", lambda b: b["device_type"]),
    ("SIZE", lambda b: human_bytes(b["size_bytes"])),
    ("SIGNED BY", lambda b: b.get("signing_key_id")),
    ("CREATED", lambda b: b["created_at"]),
)
FIELDS = (
    "id",
    "name",
    "version",
    "device_type",
    "size_bytes",
    "sha256",
    "signing_key_id",
    "created_at",
    "created_by",
)


def _chunks(path: Path, progress: Progress | None, task: TaskID | None) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
            yield chunk


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the bundle")],
    release: Annotated[
        Path | None,
        typer.Option(help="the signed release JSON (default: FILE.release.json)"),
    ] = None,
) -> None:
    """Upload a bundle with its signed release manifest; the server checks size, sha256 and
    signature. (The API takes a bundle in one request: a broken connection means starting again.)"""
    state = session(ctx)
    manifest_path = release or file.with_name(file.name + ".release.json")
    if not manifest_path.is_file():
        raise typer.BadParameter(
            f"no {manifest_path}: sign the bundle first (kernex-release sign {file} ...)",
            param_hint="--release",
        )
    manifest = manifest_path.read_text().strip()
    size = file.stat().st_size
    headers = {
        "Kernex-Release": manifest,
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
    }
    if state.as_json:
        bundle = state.api.post("/bundles", content=_chunks(file, None, None), headers=headers)
    else:
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=state.console, transient=True) as progress:
            task = progress.add_task("upload", total=size)
            bundle = state.api.post(
                "/bundles", content=_chunks(file, progress, task), headers=headers
            )
    state.out.done(
        f"uploaded {bundle['name']} {bundle['version']} ({human_bytes(bundle['size_bytes'])}, "
        f"signed by {bundle.get('signing_key_id')}): {bundle['id']}",
        bundle,
    )


@app.command("ls")
def list_bundles(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="release name")] = None,
    device_type: Annotated[str | None, typer.Option("--type", help="device type")] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """List bundles, newest first."""
    state = session(ctx)
    rows = state.api.pages("/bundles", limit=limit, name=name, device_type=device_type)
    state.out.table(rows, COLUMNS, empty="no bundles yet: kernex bundles upload FILE")


@app.command()
def show(ctx: typer.Context, bundle_id: str) -> None:
    """One bundle: release, digest, signature key."""
    state = session(ctx)
    state.out.detail(state.api.get(f"/bundles/{bundle_id}"), FIELDS)


@app.command("rm")
def remove(
    ctx: typer.Context,
    bundle_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete a bundle no unfinished deployment needs (the server refuses otherwise)."""
    if not yes:
        typer.confirm(f"Delete bundle {bundle_id}?", abort=True)
    state = session(ctx)
    state.api.delete(f"/bundles/{bundle_id}")
    state.out.done(f"deleted {bundle_id}", {"deleted": bundle_id})
