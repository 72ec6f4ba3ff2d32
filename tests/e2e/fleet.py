"""The whole product, each part real and in its own process: `kernex-backend serve` (and
`worker`) over HTTP with the MQTT bridge on, our Mosquitto with mTLS, PostgreSQL, an S3 server,
and `kernex-agent` processes with kits issued by the broker's CA."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.ports import free_port, wait_for_port
from kernex_devstack.s3 import EmbeddedS3
from kernex_protocol.manifest import ReleaseManifest, sign
from kernex_protocol.topics import Channel, subscription_for_all
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.kit import BrokerAddress, write_kit
from tests.integration.agent.harness import DEVICE_TYPE, AgentProcess, app_archive
from tests.integration.mqtt_client import Identity, Probe, connect

BIN = Path(sys.executable).parent


def service_identity(broker: EmbeddedBroker, name: str, folder: Path) -> dict[str, str]:
    """Issue a backend service identity (one per replica) and grant it on the broker."""
    broker.add_service_identity(name, folder)
    return {
        "KERNEX_MQTT__CA_FILE": str(folder / "ca-chain.pem"),
        "KERNEX_MQTT__CERT_FILE": str(folder / "service.crt"),
        "KERNEX_MQTT__KEY_FILE": str(folder / "service.key"),
    }


def deployment_watcher(broker: EmbeddedBroker, name: str, folder: Path) -> Probe:
    """A client with a service identity of its own (the broker makes the CN the client id:
    sharing a replica's would kick it off) that sees every notice as the broker delivers it."""
    files = service_identity(broker, name, folder)
    identity = Identity(
        name,
        Path(files["KERNEX_MQTT__CA_FILE"]),
        Path(files["KERNEX_MQTT__CERT_FILE"]),
        Path(files["KERNEX_MQTT__KEY_FILE"]),
    )
    watcher = connect(identity, broker.host, broker.port)
    watcher.subscribe(subscription_for_all(Channel.DEPLOYMENT))
    return watcher


class BackendProcess:
    """`kernex-backend serve` or `worker`, with its log in a file."""

    def __init__(
        self, command: str, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.command = command
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "BackendProcess":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "kernex-backend"), self.command, *self.args],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        return self

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Fleet:
    """A running backend plus helpers to provision devices, upload bundles and deploy."""

    def __init__(
        self,
        *,
        root: Path,
        database_url: str,
        broker: EmbeddedBroker,
        s3: EmbeddedS3,
        release_key: Ed25519PrivateKey,
        **overrides: str,
    ) -> None:
        self.root = root
        self.broker = broker
        self.release_key = release_key
        keys_dir = root / "release-keys"
        keys_dir.mkdir(parents=True)
        (keys_dir / "release.pub").write_bytes(
            release_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        creds = s3.credentials()
        self.port = free_port()
        self.base_env = {
            **os.environ,
            "KERNEX_ENVIRONMENT": "development",
            "KERNEX_DATABASE_URL": database_url,
            "KERNEX_API__PORT": str(self.port),
            "KERNEX_STORAGE__BACKEND": "s3",
            "KERNEX_STORAGE__ENDPOINT": s3.endpoint,
            "KERNEX_STORAGE__SECURE": "false",
            "KERNEX_STORAGE__ACCESS_KEY": creds.access_key,
            "KERNEX_STORAGE__SECRET_KEY": creds.secret_key,
            "KERNEX_STORAGE__BUCKET": f"kernex-e2e-{uuid.uuid4().hex[:10]}",
            "KERNEX_RELEASE__TRUSTED_KEYS_DIR": str(keys_dir),
            "KERNEX_MQTT__ENABLED": "true",
            "KERNEX_NOTICE__KEY_FILE": str(broker.notice_key_file),
            "KERNEX_MQTT__HOST": "localhost",
            "KERNEX_MQTT__PORT": str(broker.port),
            "KERNEX_MQTT__NOTIFY_INTERVAL_S": "0.2",
            "KERNEX_MQTT__SWEEP_INTERVAL_S": "1",
            "KERNEX_MQTT__HEARTBEAT_FLUSH_INTERVAL_S": "0.1",
            "KERNEX_LOG__JSON_OUTPUT": "true",
            **overrides,
        }
        self.processes: list[BackendProcess] = []
        self.agents: list[AgentProcess] = []
        self.token = ""

    def start_api(
        self, identity: str = "kernex-backend", *, extra_env: dict[str, str] | None = None
    ) -> BackendProcess:
        """`serve` with its own MQTT identity (`extra_env`: say, PYTHONPATH to another release's
        source), and an admin key for `api` in `token`."""
        env = {
            **self.base_env,
            **service_identity(self.broker, identity, self.root / identity),
            **(extra_env or {}),
        }
        api = BackendProcess("serve", env, self.root / f"{identity}.log").start()
        self.processes.append(api)
        wait_for_port("127.0.0.1", self.port, timeout=30)
        self.token = subprocess.run(
            [
                str(BIN / "kernex-backend"),
                "create-api-key",
                "--name",
                f"e2e-{uuid.uuid4().hex[:6]}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return api

    def start_worker(
        self, identity: str, *args: str, extra_env: dict[str, str] | None = None
    ) -> BackendProcess:
        env = {
            **self.base_env,
            **service_identity(self.broker, identity, self.root / identity),
            **(extra_env or {}),
        }
        worker = BackendProcess("worker", env, self.root / f"{identity}.log", args).start()
        self.processes.append(worker)
        return worker

    def stop(self) -> None:
        for agent in self.agents:
            if agent.process is not None and agent.process.poll() is None:
                agent.kill()
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                process.stop()

    @property
    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def add_device(self, **agent_overrides: str) -> AgentProcess:
        """Register a device through the API, issue its kit, prepare (not start) its agent."""
        device_id = f"e2e-{uuid.uuid4().hex[:10]}"
        with self.api as api:
            created = api.post("/devices", json={"id": device_id, "device_type": DEVICE_TYPE})
            assert created.status_code == 201, created.text
        key = new_key()
        cert = self.broker.authority.issue(
            key.public_key(), kind=CertificateKind.DEVICE, common_name=device_id, days=2
        )
        kit = self.root / device_id / "kit"
        write_kit(
            kit,
            self.broker.authority,
            device_id=device_id,
            device_type=DEVICE_TYPE,
            certificate=cert,
            key=key,
            broker=BrokerAddress("localhost", self.broker.port),
        )
        (kit / "release-keys" / "release.pub").write_bytes(
            (self.root / "release-keys" / "release.pub").read_bytes()
        )
        # A stalled transfer is retried after 10 s rather than the default 30 s.
        overrides = {"update__download_timeout_s": "10", **agent_overrides}
        agent = AgentProcess(
            kit, self.root / device_id / "state", self.root / device_id / "app", **overrides
        )
        agent.device_id = device_id  # type: ignore[attr-defined]
        self.agents.append(agent)
        return agent

    def upload(
        self, version: str, *, product: str = "app", content: bytes | None = None, **archive: Any
    ) -> dict[str, Any]:
        """Sign and upload a release through the API: `content`, or the test application."""
        if content is None:
            content = app_archive(version, **archive)
        manifest = ReleaseManifest.for_bytes(product, version, DEVICE_TYPE, content)
        signed = sign(manifest, self.release_key)
        with self.api as api:
            response = api.post(
                "/bundles", content=content, headers={"Kernex-Release": signed.to_json()}
            )
        assert response.status_code == 201, response.text
        bundle: dict[str, Any] = response.json()
        return bundle

    def deploy(self, bundle: dict[str, Any], device_ids: list[str]) -> str:
        with self.api as api:
            response = api.post(
                "/deployments",
                json={"name": "e2e", "bundle_id": bundle["id"], "device_ids": device_ids},
            )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def executions(self, deployment_id: str) -> dict[str, dict[str, Any]]:
        with self.api as api:
            rows = api.get(f"/deployments/{deployment_id}/executions").json()["data"]
        return {row["device_id"]: row for row in rows}

    def device(self, device_id: str) -> dict[str, Any]:
        with self.api as api:
            response = api.get(f"/devices/{device_id}")
        assert response.status_code == 200, response.text
        device: dict[str, Any] = response.json()
        return device


def eventually(
    check: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "",
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy; `explain` adds context to a failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    context = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"not reached within {timeout}s: {what} (last: {last!r}){context}")


def logs_of(*parts: Any) -> Callable[[], str]:
    """A failure explainer: the tails of agent and backend logs."""

    def explain() -> str:
        out = []
        for part in parts:
            path = getattr(part, "log_path", None)
            if path is not None and Path(path).exists():
                out.append(f"--- {path}\n" + Path(path).read_text(errors="replace")[-3000:])
        return "\n".join(out)

    return explain
