"""`kernex`: operate a Kernex fleet from the command line, over the REST API.

Every command takes --json (the API's JSON, for scripts). Exit statuses: 0 done; 1 refused by
the API, or a watched rollout that did not succeed; 2 a bad command line; 3 not signed in or the
key refused; 4 the server unreachable or failing.
"""

import sys
from typing import Annotated

import httpx
import typer
from rich.console import Console

from kernex_cli import __version__, admin, bundles, deployments, devices
from kernex_cli.api import API_PREFIX, ApiError, Exit
from kernex_cli.profiles import DEFAULT_PROFILE, NotSignedIn, Profile, names, save
from kernex_cli.session import Session, session

app = typer.Typer(
    name="kernex",
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(devices.app, name="devices")
app.add_typer(bundles.app, name="bundles")
app.add_typer(deployments.app, name="deployments")
app.add_typer(admin.keys, name="keys")
app.add_typer(admin.audit, name="audit")
app.command("deploy")(deployments.deploy)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kernex {__version__}")
        raise typer.Exit


@app.callback()
def main_options(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option(help="the stored profile to use (or KERNEX_PROFILE)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Operate a Kernex fleet over its REST API."""
    ctx.obj = Session(profile, as_json)


@app.command()
def login(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="the backend, e.g. https://kernex.example.com")],
    api_key: Annotated[
        str | None, typer.Option(help="the API key (asked for when left out, not echoed)")
    ] = None,
) -> None:
    """Check the URL and key against the server and store them as a profile (0600)."""
    state = session(ctx)
    key = api_key or typer.prompt("API key", hide_input=True)
    name = state.profile or DEFAULT_PROFILE
    profile = Profile(name, url.rstrip("/"), key.strip())
    try:
        response = httpx.get(
            profile.url + API_PREFIX + "/devices",
            params={"limit": 1},
            headers={"Authorization": f"Bearer {profile.api_key}"},
            timeout=15,
        )
    except httpx.TransportError as exc:
        raise ApiError(f"cannot reach {profile.url}: {exc}", Exit.UNAVAILABLE) from None
    if response.status_code in (401, 403):
        raise ApiError(f"{profile.url} refused this API key", Exit.NOT_SIGNED_IN)
    if not response.is_success:
        raise ApiError(f"{profile.url} answered {response.status_code}", Exit.UNAVAILABLE)
    path = save(profile)
    state.out.done(
        f"signed in to {profile.url} as profile {name!r} (stored in {path})",
        {"profile": name, "url": profile.url, "config_file": str(path)},
    )


@app.command()
def profiles(ctx: typer.Context) -> None:
    """List the stored profiles."""
    stored = names()
    state = session(ctx)
    if state.as_json:
        state.out.json(stored)
    else:
        state.console.print("\n".join(stored) or "no profiles: run `kernex login`")


def main() -> None:
    """Console entry point: one clear line per failure, and the documented exit status."""
    err = Console(stderr=True, highlight=False)
    args = sys.argv[1:]
    if "--json" in args[1:] and "--" not in args:
        # `kernex devices ls --json` as well as `kernex --json devices ls`.
        args.remove("--json")
        args.insert(0, "--json")
    try:
        status = app(args=args, prog_name="kernex", standalone_mode=False)
    except ApiError as exc:
        err.print(f"kernex: {exc}", markup=False)
        sys.exit(int(exc.exit_code))
    except NotSignedIn as exc:
        err.print(f"kernex: {exc}", markup=False)
        sys.exit(int(Exit.NOT_SIGNED_IN))
    except typer.Abort:
        err.print("kernex: aborted")
        sys.exit(int(Exit.REFUSED))
    except typer.exceptions.TyperException as exc:  # a bad command line (click's family)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"kernex: {exc}", markup=False)
        sys.exit(int(Exit.USAGE))
    sys.exit(status if isinstance(status, int) else 0)
