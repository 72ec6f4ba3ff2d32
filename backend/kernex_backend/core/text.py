"""Annotated string types for API input.

PostgreSQL text cannot hold NUL, and control characters in names end up in terminals and logs,
so free text refuses both at the edge instead of failing in the database.
"""

from typing import Annotated

from pydantic import AfterValidator, StringConstraints, WithJsonSchema

from kernex_protocol.ids import DEVICE_ID_PATTERN, validate_device_id

_NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"

# Device IDs: the protocol's allow-list, with its explanatory error message.
# The pattern states the rule in the schema; the validator gives the clearer message.
DeviceId = Annotated[
    str,
    AfterValidator(validate_device_id),
    WithJsonSchema(
        {"type": "string", "pattern": DEVICE_ID_PATTERN, "minLength": 1, "maxLength": 64}
    ),
]

# Identifiers that become topic levels, object keys or filter values.
Slug = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]

# One line of human text.
Label = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL_CHARS)]
# The same, where the column holds 64 (a Field(max_length=...) beside Label would not narrow it:
# the annotation's own constraint wins, in the schema and in validation).
ShortLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL_CHARS)
]

TAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=128, pattern=_NO_CONTROL_CHARS)]
