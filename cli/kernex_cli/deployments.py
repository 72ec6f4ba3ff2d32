"""`kernex deploy` and `kernex deployments`: create with a preview, list, show, watch live,
and the controls (pause, resume, cancel, approve, retry)."""

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kernex_cli.api import Api, ApiError, Exit
from kernex_cli.devices import parse_tags
from kernex_cli.render import STATE_STYLE, styled
from kernex_cli.session import session

app = typer.Typer(help="Rollouts of a bundle to devices.", no_args_is_help=True)

FAILURE_STATES = ("failed", "rolled_back", "timed_out")
ORDER = (
    "queued",
    "pending",
    "notified",
    "downloading",
    "verifying",
    "installing",
    "health_check",
    "succeeded",
    "failed",
    "rolled_back",
    "timed_out",
    "canceled",
)
COLUMNS = (
    ("ID", lambda d: d["id"]),
    ("NAME", lambda d: d["name"]),
    ("STATUS", lambda d: d["status"]),
    # A completed deployment in which devices failed: "failed" or "partial" here.
    ("OUTCOME", lambda d: d.get("outcome", "-")),
    ("WAVE", lambda d: d["current_wave"]),
    ("WAITING FOR", lambda d: d.get("waiting_for") or d.get("pause_reason")),
    ("CREATED", lambda d: d["created_at"]),
)


def _waves(text: str) -> list[int | str]:
    """'1,5%,100%' -> [1, '5%', '100%']."""
    waves: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part.endswith("%"):
            waves.append(part)
        elif part.isdigit():
            waves.append(int(part))
        else:
            raise typer.BadParameter(f"{part!r} is neither a count nor a percentage")
    return waves


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise typer.BadParameter(f"{text!r} is not between 0% and 100%")
    return value


def resolve_bundle(api: Api, bundle: str) -> str:
    """A bundle id as given, or NAME@VERSION looked up."""
    name, sep, version = bundle.partition("@")
    if not sep:
        return bundle
    for row in api.pages("/bundles", name=name):
        if row["version"] == version:
            return str(row["id"])
    raise ApiError(
        f"no bundle {name} {version}: see `kernex bundles ls --name {name}`", Exit.REFUSED
    )


def deploy(
    ctx: typer.Context,
    bundle: Annotated[str, typer.Argument(help="bundle id, or NAME@VERSION")],
    to: Annotated[
        list[str] | None, typer.Option("--to", help="tag=value of the devices; repeat to narrow")
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="a device id; repeat for several")
    ] = None,
    device_type: Annotated[str | None, typer.Option("--type", help="only this type")] = None,
    everyone: Annotated[bool, typer.Option("--all", help="every active device")] = False,
    waves: Annotated[str, typer.Option(help="wave sizes, e.g. 1,5%,100%")] = "100%",
    max_failure: Annotated[
        str | None,
        typer.Option(help="abort when more than this share of finished devices failed, e.g. 10%"),
    ] = None,
    success_threshold: Annotated[
        str, typer.Option(help="share of a wave that must succeed before the next")
    ] = "100%",
    soak: Annotated[int, typer.Option(help="seconds to wait after each wave")] = 0,
    approval: Annotated[bool, typer.Option(help="wait for `approve` before each wave")] = False,
    jitter: Annotated[int, typer.Option(help="spread each device's start over this many s")] = 0,
    dynamic: Annotated[bool, typer.Option(help="also devices that match later")] = False,
    name: Annotated[str | None, typer.Option(help="default: the bundle's name and version")] = None,
    preview: Annotated[bool, typer.Option(help="show who would get it; create nothing")] = False,
) -> None:
    """Roll a bundle out to devices in waves; --preview shows the plan first."""
    state = session(ctx)
    targets = [bool(to), bool(device), everyone]
    if sum(targets) != 1:
        raise typer.BadParameter("give exactly one of --to, --device or --all")
    bundle_id = resolve_bundle(state.api, bundle)
    body: dict[str, Any] = {
        "name": name or f"deploy {bundle}",
        "bundle_id": bundle_id,
        "dynamic": dynamic,
        "strategy": {
            "waves": _waves(waves),
            "success_threshold_percent": _percent(success_threshold),
            "soak_s": soak,
            "approval_required": approval,
            "jitter_s": jitter,
        },
    }
    if device:
        body["device_ids"] = device
    else:
        selector: dict[str, Any] = {"tags": parse_tags(to or []), "all": everyone}
        if device_type:
            selector["device_type"] = device_type
        body["selector"] = selector
    if max_failure is not None:
        body["abort_criteria"] = [
            {
                "failure_types": ["all"],
                "threshold_percent": _percent(max_failure),
                "action": "abort",
            }
        ]
    if preview:
        plan = state.api.post("/deployments/preview", json=body)
        _print_preview(state.out.as_json, plan, state)
        return
    created = state.api.post("/deployments", json=body)
    state.out.done(
        f"deployment {created['id']} {styled(created['status'])}; "
        f"watch it: kernex deployments watch {created['id']}",
        created,
    )


def _print_preview(as_json: bool, plan: dict[str, Any], state: Any) -> None:
    if as_json:
        state.out.json(plan)
        return
    state.console.print(f"{plan['devices']} device(s) would receive it")
    for wave in plan["waves"]:
        state.console.print(f"  wave {wave.get('wave')}: {wave.get('devices')} device(s)")
    for excluded in plan.get("excluded", []):
        state.console.print(f"  left out: {styled(excluded)}")
    if plan.get("superseded"):
        state.console.print(f"  superseding {plan['superseded']} unfinished execution(s)")
    state.console.print("nothing created (without --preview it would be)")


@app.command("ls")
def list_deployments(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="running, paused, completed, ...")] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = 50,
) -> None:
    """List deployments, newest first."""
    state = session(ctx)
    rows = state.api.pages("/deployments", limit=limit, status=status)
    state.out.table(rows, COLUMNS, empty="no deployments")


def _counts_line(counts: dict[str, int]) -> Text:
    line = Text()
    for name in ORDER:
        if counts.get(name):
            line.append(f"{name} {counts[name]}  ", style=STATE_STYLE.get(name, ""))
    return line


def failing(api: Api, deployment_id: str) -> list[dict[str, Any]]:
    """The executions that ended badly, with their error codes."""
    rows: list[dict[str, Any]] = []
    for state_name in FAILURE_STATES:
        rows += api.pages(f"/deployments/{deployment_id}/executions", state=state_name)
    return rows


def _summary(detail: dict[str, Any], failures: list[dict[str, Any]]) -> Group:
    head = Text.assemble(
        (f"{detail['name']} ", "bold"),
        (detail["status"], STATE_STYLE.get(detail["status"], "")),
        f"  outcome: {detail.get('outcome', '-')}  wave {detail['current_wave']}",
    )
    if detail.get("waiting_for") or detail.get("pause_reason"):
        head.append(f"  ({detail.get('waiting_for') or detail.get('pause_reason')})")
    waves = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("WAVE", "DEVICES", "SUCCESS", "STATES"):
        waves.add_column(column)
    for wave in detail.get("waves", []):
        waves.add_row(
            str(wave["wave"]),
            str(wave["devices"]),
            f"{wave['success_percent']:.0f}%",
            _counts_line(wave["counts"]),
        )
    parts: list[Any] = [head, _counts_line(detail["execution_counts"]), waves]
    if failures:
        table = Table(title="failing devices", show_edge=False, header_style="bold red")
        for column in ("DEVICE", "STATE", "ERROR", "DETAIL"):
            table.add_column(column)
        for row in failures[:20]:
            table.add_row(
                row["device_id"],
                styled(row["state"]),
                row.get("error_code") or "-",
                (row.get("error_detail") or "")[:80],
            )
        parts.append(table)
    return Group(*parts)


def events(api: Api, deployment_id: str) -> Iterator[dict[str, Any]]:
    """The deployment's Server-Sent Events until the stream ends (it ends when the deployment
    finishes), resuming after a broken connection from the last id."""
    last_id: str | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else None
        try:
            with api.stream(f"/deployments/{deployment_id}/events", headers=headers) as response:
                kind, data = "message", ""
                for line in response.iter_lines():
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line == "" and data:
                        yield {"id": last_id, "event": kind, "data": json.loads(data)}
                        kind, data = "message", ""
                    elif line.startswith(":"):
                        yield {"id": last_id, "event": "keepalive", "data": None}
            return
        except ApiError as exc:
            if exc.exit_code != Exit.UNAVAILABLE:
                raise
            time.sleep(2)  # the stream broke: resume from the last event


def _verdict(detail: dict[str, Any]) -> int:
    if detail["status"] in ("aborted", "canceled") or detail.get("outcome") in (
        "failed",
        "partial",
    ):
        return int(Exit.REFUSED)
    return int(Exit.OK)


@app.command()
def watch(ctx: typer.Context, deployment_id: str) -> None:
    """Follow a deployment live: counts per state and per wave, failing devices with their error
    codes as they fail. Exits 0 if every device succeeded, 1 if the rollout was aborted or
    canceled or any device failed."""
    state = session(ctx)
    api = state.api
    detail = api.get(f"/deployments/{deployment_id}")
    if state.as_json:
        for event in events(api, deployment_id):
            if event["event"] != "keepalive":
                state.out.json(event)
        detail = api.get(f"/deployments/{deployment_id}")
        state.out.json({"final": detail})
        raise typer.Exit(_verdict(detail))
    failures = failing(api, deployment_id)
    with Live(_summary(detail, failures), console=state.console, refresh_per_second=4) as live:
        for _event in events(api, deployment_id):
            detail = api.get(f"/deployments/{deployment_id}")
            failures = failing(api, deployment_id)
            live.update(_summary(detail, failures))
        detail = api.get(f"/deployments/{deployment_id}")
        live.update(_summary(detail, failing(api, deployment_id)))
    verdict = _verdict(detail)
    state.console.print(
        f"{detail['status']}, outcome {detail['outcome']}"
        + ("" if verdict == 0 else " - not every device succeeded")
    )
    raise typer.Exit(verdict)


@app.command()
def show(ctx: typer.Context, deployment_id: str) -> None:
    """One deployment: status and outcome, counts per state and per wave, failing devices."""
    state = session(ctx)
    detail = state.api.get(f"/deployments/{deployment_id}")
    if state.as_json:
        state.out.json(detail)
        return
    state.console.print(_summary(detail, failing(state.api, deployment_id)))


def _control(ctx: typer.Context, deployment_id: str, action: str, body: Any = None) -> None:
    state = session(ctx)
    result = state.api.post(f"/deployments/{deployment_id}/{action}", json=body)
    state.out.done(f"{deployment_id}: {styled(result['status'])}", result)


@app.command()
def pause(ctx: typer.Context, deployment_id: str) -> None:
    """Stop admitting devices (those already notified finish)."""
    _control(ctx, deployment_id, "pause")


@app.command()
def resume(ctx: typer.Context, deployment_id: str) -> None:
    """Continue a paused deployment."""
    _control(ctx, deployment_id, "resume")


@app.command()
def cancel(
    ctx: typer.Context,
    deployment_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Cancel: devices not yet installing are withdrawn."""
    if not yes:
        typer.confirm(f"Cancel deployment {deployment_id}?", abort=True)
    _control(ctx, deployment_id, "cancel")


@app.command()
def approve(
    ctx: typer.Context,
    deployment_id: str,
    override_threshold: Annotated[
        bool, typer.Option(help="start the next wave even below the success threshold")
    ] = False,
) -> None:
    """Approve the next wave."""
    _control(ctx, deployment_id, "approve", {"override_threshold": override_threshold})


@app.command()
def retry(ctx: typer.Context, deployment_id: str) -> None:
    """Retry the devices that failed (each as a new attempt)."""
    _control(ctx, deployment_id, "retry")
