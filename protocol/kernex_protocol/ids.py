"""Device identifier rules.

A device ID becomes an MQTT topic level, a certificate common name, the MQTT client ID and the
username in broker ACLs. MQTT gives `/`, `+`, `#` and a leading `$` special meaning, so an ID that
held one of them could escape its per-device ACL pattern. The rule is therefore an allow-list.
"""

import re
from typing import Final

DEVICE_ID_MAX_LENGTH: Final = 64
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DEVICE_ID_RE: Final = re.compile(DEVICE_ID_PATTERN)


class InvalidDeviceId(ValueError):
    """Raised when a string is not an acceptable device ID."""


def is_valid_device_id(value: str) -> bool:
    """Tell whether `value` is an acceptable device ID."""
    # fullmatch, not match: `$` in a Python regex also matches before a trailing newline.
    return _DEVICE_ID_RE.fullmatch(value) is not None


def validate_device_id(value: str) -> str:
    """Return `value` unchanged if it is a valid device ID, else raise InvalidDeviceId."""
    if is_valid_device_id(value):
        return value
    if not value:
        reason = "it is empty"
    elif len(value) > DEVICE_ID_MAX_LENGTH:
        reason = f"it is longer than {DEVICE_ID_MAX_LENGTH} characters"
    else:
        bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._-"))})
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5])
            reason = f"it contains characters that are not allowed ({shown})"
        else:
            reason = "it must start with a letter or a digit"
    raise InvalidDeviceId(
        f"invalid device ID: {reason}; a device ID is 1-64 characters from A-Z a-z 0-9 . _ - "
        "and starts with a letter or a digit"
    )
