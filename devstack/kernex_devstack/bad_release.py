"""The demo's second act: a bad release that stops itself.

A small simulated fleet (kernex-sim: the real agent code, real mTLS, a simulated installer)
runs the version the first act rolled out. The next version is bad on about half of these
devices (their health check fails, the agent rolls back). It goes out in waves, a canary of
five first, with an abort rule and a rollback plan signed by the release key: the canary's
failures trip the rule, the deployment aborts, notices not yet acted on are withdrawn, and the
canaries that did install the bad version get the previous one back, all without an operator.
Each step is printed as it happens, from the deployment's event stream and device states.
"""

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from kernex_devstack.samples import load_or_create_release_key, sample_bundle_bytes
from kernex_protocol.manifest import ReleaseManifest, RollbackApproval, sign, sign_rollback

FLEET_SIZE = 20
FLEET_TAG = {"fleet": "simulated"}
PREFIX = "demo-sim"
PRODUCT = "hello-app"
DEVICE_TYPE = "gateway"
SHOWN_EVENTS = {
    "admitted",
    "wave_started",
    "paused",
    "aborted",
    "rollback_started",
    "completed",
    "canceled",
}


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the demo talks to a person


class SimulatedFleet:
    """kernex-sim in the background, its devices tagged so a selector finds them."""

    def __init__(self, *, ca_dir: Path, ca_chain: Path, release_keys: Path, state_dir: Path):
        self.ca_dir, self.ca_chain, self.release_keys = ca_dir, ca_chain, release_keys
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.ids = [f"{PREFIX}-{i:05d}" for i in range(1, FLEET_SIZE + 1)]

    def start(
        self, *, broker_port: int, api_url: str, token: str, bad_version: str
    ) -> subprocess.Popen[bytes]:
        """Start kernex-sim; the caller stops the returned process (SIGTERM) when done."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.state_dir / "api-key"
        key_file.write_text(token)
        key_file.chmod(0o600)
        log = (self.state_dir / "sim.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "kernex-sim"),
                "run",
                "--ca",
                str(self.ca_dir),
                "--ca-chain",
                str(self.ca_chain),
                "--release-keys",
                str(self.release_keys),
                "--product",
                PRODUCT,
                "--broker-host",
                "localhost",
                "--broker-port",
                str(broker_port),
                "--devices",
                str(FLEET_SIZE),
                "--processes",
                "1",
                "--prefix",
                PREFIX,
                "--device-type",
                DEVICE_TYPE,
                "--heartbeat-s",
                "10",
                "--ramp",
                "50",
                "--fail-health",
                "0.5",
                "--bad-version",
                bad_version,
                "--seed",
                "7",
                "--state-dir",
                str(self.state_dir),
                "--register",
                api_url,
                "--api-key-file",
                str(key_file),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        return self.process


async def _wait_online(client: httpx.AsyncClient, ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = await client.get("/api/v1/devices", params={"online": "true", "limit": 500})
        online = {d["id"] for d in listed.json()["data"]} & set(ids)
        if len(online) == len(ids):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the simulated fleet did not come online; see .kernex/sim/sim.log")


async def _upload(client: httpx.AsyncClient, release_dir: Path, version: str) -> dict[str, Any]:
    payload = sample_bundle_bytes(version)
    manifest = ReleaseManifest.for_bytes(PRODUCT, version, DEVICE_TYPE, payload)
    signed = sign(manifest, load_or_create_release_key(release_dir))
    response = await client.post(
        "/api/v1/bundles",
        content=payload,
        headers={"Kernex-Release": signed.to_json(), "Content-Type": "application/octet-stream"},
    )
    if response.status_code != 201:
        raise RuntimeError(f"uploading {version} failed: {response.text}")
    bundle: dict[str, Any] = response.json()
    return bundle


def _approval(release_dir: Path, previous: dict[str, Any], from_version: str) -> dict[str, Any]:
    """What the release team runs offline: `kernex-release approve-rollback`."""
    manifest = ReleaseManifest(
        name=PRODUCT,
        version=previous["version"],
        device_type=DEVICE_TYPE,
        sha256=previous["sha256"],
        size=previous["size_bytes"],
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    approval = RollbackApproval.for_manifest(
        manifest,
        from_version=from_version,
        created_at=dt.datetime.now(dt.UTC),
        valid_for=dt.timedelta(days=7),
    )
    return sign_rollback(approval, load_or_create_release_key(release_dir)).to_document()


async def _stream_events(client: httpx.AsyncClient, deployment: str, label: str) -> None:
    """Print the deployment's notable events from its Server-Sent Events stream."""
    async with client.stream(
        "GET", f"/api/v1/deployments/{deployment}/events", timeout=None
    ) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            kind = event["kind"]
            if kind not in SHOWN_EVENTS:
                continue
            detail = {
                "admitted": f"{event.get('devices')} device(s) notified",
                "wave_started": f"wave {event.get('wave')} starts",
                "paused": f"paused: {event.get('reason')}",
                "aborted": f"ABORTED by its abort rule: {event.get('reason')}; "
                f"{event.get('withdrawn')} notice(s) withdrawn",
                "rollback_started": f"automatic rollback started for {event.get('devices')} "
                "device(s) that had installed it",
                "completed": "completed",
                "canceled": "canceled",
            }[kind]
            _say(f"demo: [{label}] {detail}")


async def _follow(client: httpx.AsyncClient, deployment: str, label: str) -> dict[str, Any]:
    """Print device states as they change until the deployment is finished."""
    events = asyncio.create_task(_stream_events(client, deployment, label))
    shown: dict[str, str] = {}
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            page = await client.get(
                f"/api/v1/deployments/{deployment}/executions", params={"limit": 500}
            )
            for execution in page.json()["data"]:
                state = execution["state"]
                device = execution["device_id"]
                if state in ("queued", "pending") or (state == "canceled" and device not in shown):
                    continue  # not reached yet, or withdrawn before it was (counted in events)
                if execution["error_code"]:
                    state = f"{state} ({execution['error_code']})"
                if shown.get(device) != state:
                    shown[device] = state
                    _say(f"  [{label}] {device:<16} {state}")
            detail: dict[str, Any] = (await client.get(f"/api/v1/deployments/{deployment}")).json()
            if detail["status"] in ("completed", "aborted", "canceled"):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events, 5)  # its last events
                return detail
            await asyncio.sleep(0.3)
        raise RuntimeError(f"deployment {deployment} did not finish within 180 s")
    finally:
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await events


async def _versions(client: httpx.AsyncClient, ids: list[str]) -> Counter[str]:
    listed = await client.get("/api/v1/devices", params={"tag": "fleet:simulated", "limit": 500})
    return Counter(str(d["current_version"]) for d in listed.json()["data"] if d["id"] in set(ids))


async def bad_release_stops_itself(
    client: httpx.AsyncClient,
    fleet: SimulatedFleet,
    *,
    release_dir: Path,
    good: dict[str, Any],
    broker_port: int,
    api_url: str,
    token: str,
    processes: list[subprocess.Popen[bytes]],
) -> str:
    """The second act; returns a one-line summary. The simulator's process is added to
    `processes` (the demo stops them all on exit)."""
    bad_version = _next_patch(good["version"])
    _say(f"demo: starting {FLEET_SIZE} simulated devices (kernex-sim, real agents and mTLS) ...")
    processes.append(
        fleet.start(broker_port=broker_port, api_url=api_url, token=token, bad_version=bad_version)
    )
    await _wait_online(client, fleet.ids, timeout_s=90)
    for device_id in fleet.ids:
        await client.patch(f"/api/v1/devices/{device_id}", json={"tags": FLEET_TAG})
    _say(f"demo: {FLEET_SIZE} simulated devices online, tagged fleet=simulated")

    baseline = await client.post(
        "/api/v1/deployments",
        json={
            "name": f"simulated fleet to {good['version']}",
            "bundle_id": good["id"],
            "selector": {"tags": FLEET_TAG},
            "supersede": True,
        },
    )
    if baseline.status_code != 201:
        raise RuntimeError(f"the baseline rollout could not start: {baseline.text}")
    done = await _follow_quietly(client, baseline.json()["id"])
    _say(f"demo: simulated fleet runs {good['version']} ({done})")

    bad = await _upload(client, release_dir, bad_version)
    _say(
        f"demo: {PRODUCT} {bad_version} uploaded: a bad build (its health check fails on half "
        "of these devices)"
    )
    policy = {
        "name": f"{bad_version} in waves",
        "bundle_id": bad["id"],
        "selector": {"tags": FLEET_TAG},
        "strategy": {"waves": [5, "50%", "100%"], "success_threshold_percent": 100},
        "abort_criteria": [
            {
                "failure_types": ["failed", "rolled_back"],
                "threshold_percent": 20,
                "min_finished": 5,
                "action": "abort",
            }
        ],
        "rollback": {
            "bundle_id": good["id"],
            "approval": _approval(release_dir, good, bad_version),
        },
    }
    created = await client.post("/api/v1/deployments", json=policy)
    if created.status_code != 201:
        raise RuntimeError(f"the wave rollout could not start: {created.text}")
    deployment = created.json()["id"]
    _say(
        f"demo: rolling out {bad_version} in waves [5, 50%, 100%]: abort if 20 % of finished "
        "devices fail or roll back; on abort, roll back to "
        f"{good['version']} (signed approval)"
    )
    detail = await _follow(client, deployment, "waves")
    summary = f"wave rollout of {bad_version} {detail['status']}"
    rollback = detail.get("rollback_deployment_id")
    if rollback:
        await _follow(client, rollback, "rollback")
    versions = await _versions(client, fleet.ids)
    spread = ", ".join(f"{n} on {v}" for v, n in versions.most_common())
    _say(f"demo: {summary}; simulated fleet now runs: {spread}")
    return f"{summary}; simulated fleet: {spread}"


async def _follow_quietly(client: httpx.AsyncClient, deployment: str) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        detail = (await client.get(f"/api/v1/deployments/{deployment}")).json()
        if detail["status"] != "running":
            counts = {k: v for k, v in detail["execution_counts"].items() if v}
            return ", ".join(f"{v} {k}" for k, v in counts.items())
        await asyncio.sleep(0.3)
    raise RuntimeError(f"deployment {deployment} did not finish within 180 s")


def _next_patch(version: str) -> str:
    major, minor, patch = version.split(".")
    return f"{major}.{minor}.{int(patch) + 1}"
