"""The signature a receiver checks: HMAC-SHA256 over "<timestamp>.<body>" with the webhook's
secret, and the timestamp within a replay window. Pure functions (receivers may copy them).

Headers: Kernex-Webhook-Id (the event's UUID: deduplicate on it, deliveries are at least
once), Kernex-Webhook-Timestamp (Unix seconds), Kernex-Webhook-Signature ("v1=<hex>").
"""

import hashlib
import hmac

SIGNATURE_HEADER = "Kernex-Webhook-Signature"
TIMESTAMP_HEADER = "Kernex-Webhook-Timestamp"
ID_HEADER = "Kernex-Webhook-Id"
EVENT_HEADER = "Kernex-Webhook-Event"
REPLAY_WINDOW_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, timestamp: str, body: bytes, *, now: float, window_s: int = 300
) -> bool:
    """Whether a received request is authentic and fresh (constant-time comparison)."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent_at) > window_s:
        return False
    return hmac.compare_digest(signature(secret, sent_at, body), header)
