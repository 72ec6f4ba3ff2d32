"""The agent tests' fixtures: a device kit per test, a bucket of signed bundles, the backend's
MQTT side, all against the session's real Mosquitto and S3 server."""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from minio import Minio

from kernex_backend.deployments.notices import load_notice_key
from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.s3 import EmbeddedS3
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.kit import BrokerAddress, write_kit
from tests.integration.agent.harness import (
    DEVICE_TYPE,
    AgentProcess,
    BackendStandIn,
    BundleStore,
)
from tests.integration.mqtt_client import Identity


@dataclass
class Device:
    """A provisioned device: its kit, its state and install directories, its agent process."""

    device_id: str
    kit: Path
    agent: AgentProcess

    @property
    def install_root(self) -> Path:
        return self.agent.install_root


DeviceFactory = Callable[..., Device]


@pytest.fixture(scope="session")
def release_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bundles(s3_server: EmbeddedS3, release_key: Ed25519PrivateKey) -> Iterator[BundleStore]:
    creds = s3_server.credentials()
    client = Minio(
        s3_server.endpoint, access_key=creds.access_key, secret_key=creds.secret_key, secure=False
    )
    bucket = f"kernex-agent-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    yield BundleStore(client, bucket, release_key)
    for item in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, item.object_name or "")
    client.remove_bucket(bucket)


@pytest.fixture
def backend_side(
    broker: EmbeddedBroker, service_identity: Identity, bundles: BundleStore
) -> Iterator[BackendStandIn]:
    side = BackendStandIn(
        service_identity,
        broker.host,
        broker.port,
        bundles,
        load_notice_key(broker.notice_key_file),
    )
    side.start()
    yield side
    side.stop()


@pytest.fixture
def make_device(
    broker: EmbeddedBroker, release_key: Ed25519PrivateKey, tmp_path: Path
) -> Iterator[DeviceFactory]:
    """Provision a device kit as `kernex-provision issue-device` does; its agent is not started."""
    devices: list[Device] = []

    def make(**overrides: str) -> Device:
        device_id = f"agent-{uuid.uuid4().hex[:10]}"
        key = new_key()
        certificate = broker.authority.issue(
            key.public_key(), kind=CertificateKind.DEVICE, common_name=device_id, days=2
        )
        kit = tmp_path / device_id / "kit"
        write_kit(
            kit,
            broker.authority,
            device_id=device_id,
            device_type=DEVICE_TYPE,
            certificate=certificate,
            key=key,
            # By name: the agent verifies the broker's host name against its certificate.
            broker=BrokerAddress("localhost", broker.port),
        )
        (kit / "release-keys" / "release.pub").write_bytes(
            release_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        agent = AgentProcess(
            kit, tmp_path / device_id / "state", tmp_path / device_id / "app", **overrides
        )
        device = Device(device_id, kit, agent)
        devices.append(device)
        return device

    yield make
    for device in devices:
        if device.agent.process is not None and device.agent.process.poll() is None:
            device.agent.kill()
