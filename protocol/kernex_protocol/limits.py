"""Size limits that both ends enforce.

The broker is configured with the largest of these (see broker-config/), the backend drops larger
payloads before parsing them, and the agent refuses oversized notices.
"""

from dataclasses import dataclass
from typing import Final

from kernex_protocol.topics import Channel

KIB: Final = 1024

MAX_PAYLOAD_BYTES: Final[dict[Channel, int]] = {
    Channel.HEARTBEAT: 4 * KIB,
    Channel.PRESENCE: 1 * KIB,
    Channel.PROGRESS: 4 * KIB,
    Channel.URL_REQUEST: 1 * KIB,
    Channel.URL_RESPONSE: 8 * KIB,
    # A notice carries the signed release manifest and a presigned URL.
    Channel.DEPLOYMENT: 16 * KIB,
}

# The broker's message_size_limit: the largest payload any channel allows.
BROKER_MAX_PAYLOAD_BYTES: Final = max(MAX_PAYLOAD_BYTES.values())

# JSON objects and arrays one payload may hold (counted on the raw bytes, before parsing, so a
# deeply nested payload never reaches the decoder). Every payload of the protocol needs a few.
MAX_CONTAINERS: Final = 32

# Integers a receiver accepts, field by field. Each bound is what the field can mean, and never
# more than the column it is stored in can hold (tests/integration/test_protocol_limits.py
# checks every `column` against the migrated schema).
INT64_MAX: Final = 2**63 - 1
JSON_SAFE_MAX: Final = 2**53 - 1  # beyond this a JavaScript client reads a different number


@dataclass(frozen=True, slots=True)
class IntLimit:
    """The accepted range of one integer field, and where it is stored."""

    low: int
    high: int
    columns: tuple[str, ...] = ()  # "table.column" it lands in


INT_LIMITS: Final[dict[str, IntLimit]] = {
    # One per connection attempt, across reboots: 2^31 is a reconnect a second for 68 years.
    "session": IntLimit(0, 2**31 - 1, ("devices.presence_session", "devices.heartbeat_session")),
    "heartbeat.seq": IntLimit(0, JSON_SAFE_MAX, ("heartbeats.sequence", "devices.heartbeat_seq")),
    "heartbeat.uptime_s": IntLimit(0, 2**32 - 1),  # 136 years; kept in heartbeats.metrics
    "heartbeat.metric": IntLimit(-JSON_SAFE_MAX, JSON_SAFE_MAX),  # jsonb values
    "progress.seq": IntLimit(0, JSON_SAFE_MAX, ("deployment_executions.report_seq",)),
    "progress.percent": IntLimit(0, 100, ("deployment_executions.progress",)),
    # Retries are 0-10, and an operator's manual retries add to them: 2^31 is far beyond both.
    "attempt": IntLimit(1, 2**31 - 1, ("deployment_executions.attempt",)),
    "notice.start_delay_s": IntLimit(0, 3600, ("deployment_executions.start_delay_s",)),
}

# Text fields: at most this many characters are kept (longer ones are cut, not refused).
TEXT_LIMITS: Final[dict[str, tuple[int, tuple[str, ...]]]] = {
    "agent_version": (64, ("devices.agent_version",)),
    "installed_version": (64, ("devices.current_version",)),
    "progress.version": (64, ("devices.current_version",)),
    "progress.error.detail": (500, ("deployment_executions.error_detail",)),
    "progress.state": (32, ("deployment_executions.device_state",)),
    "error.code": (64, ("deployment_executions.error_code",)),
    "device_id": (64, ("devices.id", "heartbeats.device_id")),
}
