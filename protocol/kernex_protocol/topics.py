"""MQTT topic names, with the QoS and retain flag each one is used with.

This module is the only place a Kernex topic string is built or parsed.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from kernex_protocol.ids import is_valid_device_id, validate_device_id

TOPIC_ROOT: Final = "kernex/v1/devices"


class Channel(StrEnum):
    """The per-device channels, named by their topic suffix."""

    HEARTBEAT = "heartbeat"
    PRESENCE = "presence"
    PROGRESS = "progress"
    URL_REQUEST = "url/request"
    URL_RESPONSE = "url/response"
    DEPLOYMENT = "deployment"


class Direction(StrEnum):
    """Who publishes on a channel."""

    DEVICE_TO_CLOUD = "device->cloud"
    CLOUD_TO_DEVICE = "cloud->device"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """How a channel is used on the wire."""

    direction: Direction
    qos: int
    retain: bool


CHANNELS: Final[dict[Channel, ChannelSpec]] = {
    # Heartbeats are periodic: losing one is harmless, so QoS 0 keeps broker load low.
    Channel.HEARTBEAT: ChannelSpec(Direction.DEVICE_TO_CLOUD, qos=0, retain=False),
    # Retained so a newly started backend learns every device's last known presence at once.
    Channel.PRESENCE: ChannelSpec(Direction.DEVICE_TO_CLOUD, qos=1, retain=True),
    Channel.PROGRESS: ChannelSpec(Direction.DEVICE_TO_CLOUD, qos=1, retain=False),
    Channel.URL_REQUEST: ChannelSpec(Direction.DEVICE_TO_CLOUD, qos=1, retain=False),
    Channel.URL_RESPONSE: ChannelSpec(Direction.CLOUD_TO_DEVICE, qos=1, retain=False),
    # Retained so a device that was offline finds its current notice the moment it subscribes.
    Channel.DEPLOYMENT: ChannelSpec(Direction.CLOUD_TO_DEVICE, qos=1, retain=True),
}


def topic_for(device_id: str, channel: Channel) -> str:
    """Build the topic of `channel` for `device_id`."""
    return f"{TOPIC_ROOT}/{validate_device_id(device_id)}/{channel.value}"


def subscription_for_all(channel: Channel) -> str:
    """The wildcard filter matching `channel` of every device."""
    return f"{TOPIC_ROOT}/+/{channel.value}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic split into the device it belongs to and its channel."""

    device_id: str
    channel: Channel


def parse_topic(topic: str) -> ParsedTopic | None:
    """Split a Kernex device topic, or return None if it is not one."""
    prefix = TOPIC_ROOT + "/"
    if not topic.startswith(prefix):
        return None
    device_id, sep, suffix = topic[len(prefix) :].partition("/")
    if not sep or not is_valid_device_id(device_id):
        return None
    try:
        channel = Channel(suffix)
    except ValueError:
        return None
    return ParsedTopic(device_id=device_id, channel=channel)
