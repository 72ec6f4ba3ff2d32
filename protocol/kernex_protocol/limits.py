"""Size limits that both ends enforce.

The broker is configured with the largest of these (see broker-config/), the backend drops larger
payloads before parsing them, and the agent refuses oversized notices.
"""

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
