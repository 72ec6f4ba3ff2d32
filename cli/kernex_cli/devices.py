"""`kernex devices`: list, show, presence, tag, untag, decommission, revoke."""

from typing import Annotated, Any

import typer

from kernex_cli.render import styled
from kernex_cli.session import session

app = typer.Typer(help="The fleet's devices.", no_args_is_help=True)

COLUMNS = (
    ("ID", lambda d: d["id"]),
    ("TYPE", lambda d: d["device_type"]),
    ("STATUS", lambda d: d["status"]),
    ("ONLINE", lambda d: "online" if d["online"] else "offline"),
    ("VERSION", lambda d: d.get("current_version")),
    ("AGENT", lambda d: d.get("agent_version")),
    ("LAST SEEN", lambda d: d.get("last_seen_at")),
    ("TAGS", lambda d: d.get("tags")),
)
FIELDS = (
    "id",
    "name",
    "device_type",
    "status",
    "online",
    "last_seen_at",
    "current_version",
    "agent_version",
    "tags",
    "cert_serial",
    "cert_not_after",
    "quarantined_until",
    "created_at",
)


PRESENCE_COLUMNS = (
    ("AT", lambda e: e["at"]),
    ("PRESENCE", lambda e: "online" if e["online"] else "offline"),
    ("SESSION", lambda e: e.get("session")),
    ("REASON", lambda e: e.get("reason")),
)


def parse_tags(pairs: list[str]) -> dict[str, str]:
    """['site=berlin', 'ring=canary'] -> a mapping; a pair without '=' is a usage error."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE")
        tags[key] = value
    return tags


@app.command("ls")
def list_devices(
    ctx: typer.Context,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE; repeat to narrow")] = None,
    device_type: Annotated[str | None, typer.Option("--type", help="device type")] = None,
    status: Annotated[str | None, typer.Option(help="active or decommissioned")] = None,
    online: Annotated[bool | None, typer.Option("--online/--offline", help="presence")] = None,
    version: Annotated[str | None, typer.Option(help="running version")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many")] = None,
) -> None:
    """List devices, newest first, with filters."""
    state = session(ctx)
    tags = parse_tags(tag or [])  # refuse a malformed pair before asking the server
    rows = state.api.pages(
        "/devices",
        limit=limit,
        tag=[f"{key}:{value}" for key, value in tags.items()] or None,
        device_type=device_type,
        status=status,
        online=None if online is None else str(online).lower(),
        version=version,
    )
    state.out.table(rows, COLUMNS, empty="no devices match")


@app.command()
def show(ctx: typer.Context, device_id: str) -> None:
    """One device: identity, presence, versions, certificate, tags."""
    state = session(ctx)
    state.out.detail(state.api.get(f"/devices/{device_id}"), FIELDS)


@app.command("presence")
def presence(
    ctx: typer.Context,
    device_id: str,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 20,
) -> None:
    """A device's presence history, newest first: when it came online and went offline, and
    how that was learned (shutdown, lost: its Last Will, silent: nothing heard, heartbeat)."""
    state = session(ctx)
    history = state.api.get(f"/devices/{device_id}/presence", limit=limit)
    state.out.table(history["data"], PRESENCE_COLUMNS, empty="no presence change recorded yet")


def _retag(ctx: typer.Context, device_id: str, change: Any) -> None:
    state = session(ctx)
    device = state.api.get(f"/devices/{device_id}")
    tags = change(dict(device.get("tags") or {}))
    updated = state.api.patch(f"/devices/{device_id}", {"tags": tags})
    state.out.done(f"{device_id}: tags {styled(updated['tags'])}", updated)


@app.command("tag")
def tag_device(
    ctx: typer.Context,
    device_id: str,
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE ...")],
) -> None:
    """Set tags (other tags stay)."""
    new = parse_tags(pairs)
    _retag(ctx, device_id, lambda tags: {**tags, **new})


@app.command("untag")
def untag_device(
    ctx: typer.Context,
    device_id: str,
    keys: Annotated[list[str], typer.Argument(help="KEY ...")],
) -> None:
    """Remove tags by key."""
    _retag(ctx, device_id, lambda tags: {k: v for k, v in tags.items() if k not in keys})


@app.command()
def decommission(
    ctx: typer.Context,
    device_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Take a device out of service (it receives no more deployments)."""
    if not yes:
        typer.confirm(f"Decommission {device_id}?", abort=True)
    state = session(ctx)
    device = state.api.post(f"/devices/{device_id}/decommission")
    state.out.done(f"{device_id}: {styled(device['status'])}", device)


@app.command()
def revoke(
    ctx: typer.Context,
    device_id: str,
    reason: Annotated[str, typer.Option(help="RFC 5280 reason")] = "unspecified",
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Revoke every certificate of a device: the broker cuts it off within seconds."""
    if not yes:
        typer.confirm(f"Revoke {device_id}'s certificates?", abort=True)
    state = session(ctx)
    result = state.api.post(f"/devices/{device_id}/revoke", json={"reason": reason})
    cut = "cut off" if result["device_cut_off"] else "still holds a valid certificate"
    state.out.done(
        f"{device_id}: {len(result['revoked_serials'])} certificate(s) revoked; {cut}", result
    )
