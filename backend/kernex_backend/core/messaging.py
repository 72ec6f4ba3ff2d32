"""The messaging port: how domain code talks to devices without knowing the transport.

Domains (notices, progress, presence, telemetry) say "publish this payload on this device's
channel" and count what they did; the MQTT bridge (mqtt/bridge.py) is the adapter that carries
it out, with the QoS and retain flag the protocol's topic table gives each channel. Domain code
depends on this module only, so it can be tested with an in-memory publisher and never imports
the bridge (`make check` enforces it).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kernex_protocol.topics import Channel


class PublishFailed(RuntimeError):
    """The message was not delivered: the broker is not connected, or did not acknowledge it."""


class DevicePublisher(Protocol):
    """Sends payloads to devices' channels and waits for the broker's acknowledgements."""

    async def publish_to(self, device_id: str, channel: Channel, payload: bytes) -> None:
        """Publish on `channel` of `device_id` (QoS and retain from the topic table);
        PublishFailed if it was not acknowledged."""

    async def publish_many(
        self, channel: Channel, messages: Sequence[tuple[str, bytes]]
    ) -> list[bool]:
        """Publish each (device_id, payload) on that device's `channel`, all handed over at
        once (the transport paces them); whether each was acknowledged, in order. Never raises
        for a message that failed: False, and the caller sends it again later."""


class SessionEnder(Protocol):
    """Ends devices' live broker sessions (the MQTT adapter does it by taking them over)."""

    async def end_sessions(self, device_ids: list[str]) -> int:
        """End the sessions of `device_ids`; how many takeover connections were accepted."""


@dataclass
class TrafficCounters:
    """Counters of device traffic and what was done with it (exposed by the API)."""

    counts: Counter[str] = field(default_factory=Counter)

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to counter `name`."""
        self.counts[name] += n
