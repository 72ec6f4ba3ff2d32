"""The whole product on this machine, for the fleet benchmarks: embedded PostgreSQL, SeaweedFS,
our Mosquitto (mTLS), `kernex-backend serve` with the MQTT bridge in its own process, and
helpers to register devices, upload signed bundles, deploy, and run kernex-sim."""

import asyncio
import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from subscriber import OnMessage, Subscriber

from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.ports import free_port, wait_for_port
from kernex_devstack.postgres import EmbeddedPostgres
from kernex_devstack.s3 import EmbeddedS3
from kernex_protocol.manifest import ReleaseManifest, sign
from kernex_protocol.topics import Channel, subscription_for_all

BIN = Path(sys.executable).parent
DEVICE_TYPE = "bench-board"


def bundle_bytes(version: str, size: int) -> bytes:
    """A tar.gz of about `size` bytes (incompressible payload) with a VERSION file."""
    payload = hashlib.shake_256(version.encode()).digest(size)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for name, data in (("VERSION", version.encode()), ("payload.bin", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# A per-device heartbeat budget no benchmark load reaches (the default is 1/s with a burst).
UNBUDGETED_PER_S = 100_000


class FleetStack:
    """Start with `start()`, stop with `stop()`; every process is measured with psutil."""

    def __init__(self, root: Path, **backend_env: str) -> None:
        self.root = root
        self.pg = EmbeddedPostgres(root / "pg")
        self.s3 = EmbeddedS3(root / "s3")
        self.broker = EmbeddedBroker(root / "broker")
        self.release_key = Ed25519PrivateKey.generate()
        self.keys_dir = root / "release-keys"
        self.backend_env = backend_env
        self.port = free_port()
        self.backend: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.token = ""
        self.database_url = ""

    @classmethod
    def unbudgeted(cls, root: Path) -> "FleetStack":
        """A stack for a heartbeat load whose few devices beat far faster than real ones (a
        few connections stand for a fleet): their per-device budget is lifted, or it, not the
        ingest, would be what is measured."""
        return cls(root, KERNEX_MQTT__HEARTBEAT_BUDGET_PER_S=str(UNBUDGETED_PER_S))

    @classmethod
    def with_quarantine(cls, root: Path) -> "FleetStack":
        """A stack whose backend may write the broker's ACL, so quarantine cuts a device off for
        real, and flushes heartbeats every 0.1 s (delays measured, not the flush interval)."""
        return cls(
            root,
            KERNEX_PKI__CA_DIR=str(root / "broker" / "ca"),
            KERNEX_PKI__BROKER_DIR=str(root / "broker" / "broker"),
            KERNEX_MQTT__HEARTBEAT_FLUSH_INTERVAL_S="0.1",
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.s3.start()
        self.broker.start()
        self.pg.start()
        asyncio.run(self._create_database())
        self.database_url = self.pg.url("kernex")
        self.keys_dir.mkdir(exist_ok=True)
        (self.keys_dir / "release.pub").write_bytes(
            self.release_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        creds = self.s3.credentials()
        service = self.broker.service_dir
        self.env = {
            **os.environ,
            "KERNEX_ENVIRONMENT": "development",
            "KERNEX_DATABASE_URL": self.database_url,
            "KERNEX_API__PORT": str(self.port),
            "KERNEX_API__PAGE_SIZE_MAX": "500",
            "KERNEX_DB__POOL_SIZE": "20",
            "KERNEX_STORAGE__BACKEND": "s3",
            "KERNEX_STORAGE__ENDPOINT": self.s3.endpoint,
            "KERNEX_STORAGE__SECURE": "false",
            "KERNEX_STORAGE__ACCESS_KEY": creds.access_key,
            "KERNEX_STORAGE__SECRET_KEY": creds.secret_key,
            "KERNEX_RELEASE__TRUSTED_KEYS_DIR": str(self.keys_dir),
            "KERNEX_MQTT__ENABLED": "true",
            "KERNEX_NOTICE__KEY_FILE": str(self.broker.notice_key_file),
            "KERNEX_MQTT__HOST": "localhost",
            "KERNEX_MQTT__PORT": str(self.broker.port),
            "KERNEX_MQTT__CA_FILE": str(service / "ca-chain.pem"),
            "KERNEX_MQTT__CERT_FILE": str(service / "service.crt"),
            "KERNEX_MQTT__KEY_FILE": str(service / "service.key"),
            "KERNEX_MQTT__NOTIFY_INTERVAL_S": "0.2",
            "KERNEX_MQTT__URL_REQUESTS_PER_MINUTE": "60",
            "KERNEX_LOG__LEVEL": "WARNING",
            "KERNEX_LOG__JSON_OUTPUT": "true",
            **self.backend_env,
        }
        subprocess.run(
            [str(BIN / "kernex-backend"), "migrate"], env=self.env, check=True, capture_output=True
        )
        self.start_backend()
        self.token = subprocess.run(
            [str(BIN / "kernex-backend"), "create-api-key", "--name", "bench"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    async def _create_database(self) -> None:
        conn = await asyncpg.connect(self.pg.url("postgres", driver="postgresql"))
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'kernex'"):
                await conn.execute('CREATE DATABASE "kernex"')
        finally:
            await conn.close()

    def start_backend(self) -> None:
        with (self.root / "backend.log").open("ab") as log:
            self.backend = subprocess.Popen(
                [str(BIN / "kernex-backend"), "serve"], env=self.env, stdout=log, stderr=log
            )
        wait_for_port("127.0.0.1", self.port, timeout=60)

    def stop_backend(self) -> None:
        if self.backend is not None and self.backend.poll() is None:
            self.backend.terminate()
            self.backend.wait(30)

    def start_workers(self, count: int) -> None:
        """`count` more bridge processes (`kernex-backend worker`) beside `serve`, each with a
        service identity of its own, sharing the device subscriptions with it."""
        for _ in range(count):
            name = f"bench-worker-{len(self.workers) + 1}-{uuid.uuid4().hex[:6]}"
            folder = self.root / name
            self.broker.add_service_identity(name, folder)
            env = {
                **self.env,
                "KERNEX_MQTT__CA_FILE": str(folder / "ca-chain.pem"),
                "KERNEX_MQTT__CERT_FILE": str(folder / "service.crt"),
                "KERNEX_MQTT__KEY_FILE": str(folder / "service.key"),
            }
            with (self.root / f"{name}.log").open("ab") as log:
                self.workers.append(
                    subprocess.Popen(
                        [str(BIN / "kernex-backend"), "worker"], env=env, stdout=log, stderr=log
                    )
                )
            self._wait_connected(name, self.workers[-1])

    def _wait_connected(self, client_id: str, process: subprocess.Popen[bytes]) -> None:
        """Until the broker has `client_id` connected: a worker still starting up (a second of
        imports) would take CPU from whatever the benchmark measures first."""
        deadline = time.monotonic() + 60
        while f" as {client_id} " not in self.broker.log():
            if process.poll() is not None:
                raise RuntimeError(f"{client_id} exited with {process.returncode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{client_id} did not connect to the broker within 60 s")
            time.sleep(0.2)

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(30)
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        self.stop_backend()
        self.broker.stop()
        self.s3.stop()
        self.pg.stop()

    # --- measuring --------------------------------------------------------------------------

    def subscriber(self, role: str, channel: Channel, on_message: OnMessage) -> Subscriber:
        """A bare subscriber to `channel` of every device, with a service identity of its own;
        use it as a context manager."""
        name = f"bench-{role}-{uuid.uuid4().hex[:6]}"
        return Subscriber(
            self.broker, name, self.root / name, subscription_for_all(channel), on_message
        )

    def processes(self) -> dict[str, psutil.Process]:
        assert self.backend is not None and self.broker._process is not None
        return {
            "backend": psutil.Process(self.backend.pid),
            "broker": psutil.Process(self.broker._process.pid),
        }

    def sql(self, query: str, *args: Any) -> Any:
        async def run() -> Any:
            conn = await asyncpg.connect(self.pg.url("kernex", driver="postgresql"))
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()

        return asyncio.run(run())

    # --- fleet --------------------------------------------------------------------------------

    def register(self, ids: list[str]) -> None:
        """Create the devices straight in the database (COPY): registration is not measured."""

        async def run() -> None:
            conn = await asyncpg.connect(self.pg.url("kernex", driver="postgresql"))
            try:
                now = dt.datetime.now(dt.UTC)
                await conn.copy_records_to_table(
                    "devices",
                    records=[(i, DEVICE_TYPE, "{}", "registered", False, now, now) for i in ids],
                    columns=[
                        "id",
                        "device_type",
                        "tags",
                        "status",
                        "online",
                        "created_at",
                        "updated_at",
                    ],
                )
            finally:
                await conn.close()

        asyncio.run(run())

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=120,
        )

    def upload(self, version: str, size: int) -> dict[str, Any]:
        content = bundle_bytes(version, size)
        manifest = ReleaseManifest.for_bytes("bench-app", version, DEVICE_TYPE, content)
        with self.client() as api:
            response = api.post(
                "/bundles",
                content=content,
                headers={"Kernex-Release": sign(manifest, self.release_key).to_json()},
            )
        response.raise_for_status()
        bundle: dict[str, Any] = response.json()
        return bundle

    def deploy(self, bundle: dict[str, Any], ids: list[str] | None, **policy: Any) -> str:
        """Deploy to `ids`, or with `ids` None to the selector in `policy`; returns its id."""
        target: dict[str, Any] = {"device_ids": ids} if ids is not None else {}
        with self.client() as api:
            response = api.post(
                "/deployments",
                json={"name": f"bench {bundle['version']}", "bundle_id": bundle["id"]}
                | target
                | policy,
            )
        response.raise_for_status()
        return str(response.json()["id"])

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        """The deployment's detail."""
        with self.client() as api:
            response = api.get(f"/deployments/{deployment_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def start_sim(
        self,
        count: int,
        *,
        prefix: str = "bench",
        heartbeat_s: float = 30.0,
        ramp: float = 400.0,
        summary: Path | None = None,
        agent_state_dir: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start kernex-sim. `agent_state_dir` on a tmpfs keeps thousands of simulated devices'
        state saves (each an fsync) off this machine's one disk: each real device has its own."""
        args = [
            str(BIN / "kernex-sim"),
            "run",
            "--ca",
            str(self.broker.ca_dir),
            "--ca-chain",
            str(self.broker.service_dir / "ca-chain.pem"),
            "--release-keys",
            str(self.keys_dir),
            "--product",
            "bench-app",
            "--broker-host",
            "localhost",
            "--broker-port",
            str(self.broker.port),
            "--devices",
            str(count),
            "--prefix",
            prefix,
            "--device-type",
            DEVICE_TYPE,
            "--heartbeat-s",
            str(heartbeat_s),
            "--ramp",
            str(ramp),
            "--state-dir",
            str(self.root / "sim"),
            # The simulated devices would be machines of their own: they get what CPU the
            # backend, broker, database and store leave, instead of an equal share of it.
            "--nice",
            "10",
        ]
        if summary is not None:
            args += ["--summary", str(summary)]
        if agent_state_dir is not None:
            args += ["--agent-state-dir", str(agent_state_dir)]
        log = (self.root / "sim.log").open("ab")
        return subprocess.Popen(args, stdout=log, stderr=log)

    def wait_online(self, count: int, timeout: float) -> float:
        """Seconds until `count` devices are online in the database."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            online = self.sql("SELECT count(*) FROM devices WHERE online")[0][0]
            if online >= count:
                return time.monotonic() - started
            time.sleep(1.0)
        raise RuntimeError(f"only {online} of {count} devices online after {timeout} s")
