"""What the fleet tests share: a connected MQTT bridge, and an observer's service identity."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kernex_backend.core.config import MqttSettings
from kernex_backend.mqtt.bridge import MqttBridge
from kernex_devstack.broker import EmbeddedBroker
from tests.integration.mqtt_client import Identity


def bridge_settings(broker: EmbeddedBroker, **overrides: Any) -> MqttSettings:
    """The backend's MQTT settings for this broker, with its service identity."""
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        ca_file=broker.layout.ca_chain,
        cert_file=broker.service_dir / "service.crt",
        key_file=broker.service_dir / "service.key",
        **overrides,
    )


@contextlib.asynccontextmanager
async def connected_bridge(broker: EmbeddedBroker, mqtt: MqttSettings) -> AsyncIterator[MqttBridge]:
    bridge = MqttBridge(mqtt)
    task = asyncio.create_task(bridge.run())
    try:
        await asyncio.wait_for(bridge.connected.wait(), 15)
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def observer_identity(broker: EmbeddedBroker, tmp_path: Path) -> Identity:
    """A second service identity: the broker makes the CN the client id, so an observer with
    the backend's own would end the backend's session."""
    folder = tmp_path / "observer"
    name = f"test-observer-{uuid.uuid4().hex[:6]}"
    broker.add_service_identity(name, folder)
    return Identity(name, folder / "ca-chain.pem", folder / "service.crt", folder / "service.key")
