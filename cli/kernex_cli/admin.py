"""`kernex keys` and `kernex audit`: for holders of an admin key."""

from typing import Annotated

import typer

from kernex_cli.session import session

keys = typer.Typer(help="API keys (admin).", no_args_is_help=True)
audit = typer.Typer(help="The audit log (admin).", no_args_is_help=True)

KEY_COLUMNS = (
    ("ID", lambda k: k["id"]),
    ("NAME", lambda k: k["name"]),
    ("SCOPES", lambda k: ",".join(k["scopes"])),
    ("CREATED BY", lambda k: k["created_by"]),
    ("LAST USED", lambda k: k.get("last_used_at")),
    ("REVOKED", lambda k: k.get("revoked_at")),
)
AUDIT_COLUMNS = (
    ("AT", lambda e: e["at"]),
    ("ACTOR", lambda e: e["actor"]),
    ("ACTION", lambda e: e["action"]),
    ("OBJECT", lambda e: f"{e['object_type']}/{e['object_id']}"),
    ("DETAILS", lambda e: e.get("details")),
)


@keys.command("ls")
def list_keys(ctx: typer.Context) -> None:
    """List API keys (never their secrets)."""
    state = session(ctx)
    state.out.table(state.api.pages("/api-keys"), KEY_COLUMNS, empty="no API keys")


@keys.command("create")
def create_key(
    ctx: typer.Context,
    name: str,
    scope: Annotated[
        list[str] | None, typer.Option(help="read, write or admin; repeat (default: read)")
    ] = None,
) -> None:
    """Create a key; its token is shown once."""
    state = session(ctx)
    created = state.api.post("/api-keys", json={"name": name, "scopes": scope or ["read"]})
    state.out.done(
        f"key {created['id']} ({','.join(created['scopes'])}); its token, shown once:\n"
        f"{created['token']}",
        created,
    )


@keys.command("revoke")
def revoke_key(ctx: typer.Context, key_id: str) -> None:
    """Revoke a key: the next request with it is refused."""
    state = session(ctx)
    revoked = state.api.post(f"/api-keys/{key_id}/revoke")
    state.out.done(f"key {key_id} revoked at {revoked.get('revoked_at')}", revoked)


@audit.command("ls")
def list_audit(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option()] = None,
    action: Annotated[str | None, typer.Option(help="e.g. device.revoke")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """The newest audit events."""
    state = session(ctx)
    rows = state.api.pages("/audit-events", limit=limit, actor=actor, action=action, since=since)
    state.out.table(rows, AUDIT_COLUMNS, empty="no audit events match")
