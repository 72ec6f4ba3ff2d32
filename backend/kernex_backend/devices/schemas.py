"""API shapes for devices."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from kernex_backend.core.text import TAG_KEY_PATTERN, DeviceId, Label, Slug, TagKey, TagValue
from kernex_backend.devices.models import DeviceStatus

MAX_TAGS = 32
# The schema names the key rule with propertyNames (patternProperties alone would let any other
# key through as far as a client generated from it can tell).
Tags = Annotated[
    dict[TagKey, TagValue],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": TAG_KEY_PATTERN},
            "additionalProperties": {
                "type": "string",
                "maxLength": 128,
                "pattern": r"^[^\x00-\x1f\x7f]*$",
            },
            "maxProperties": MAX_TAGS,
        }
    ),
]


class DeviceBase(BaseModel):
    """Fields an operator sets."""

    name: Label | None = None
    tags: Tags = Field(default_factory=dict, max_length=MAX_TAGS)


class DeviceCreate(DeviceBase):
    """Request to register a device."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    device_type: Slug


class DeviceUpdate(BaseModel):
    """Request to change a device's name or tags (tags are replaced as a whole)."""

    model_config = ConfigDict(extra="forbid")

    name: Label | None = None
    tags: Tags | None = Field(default=None, max_length=MAX_TAGS)


class DevicePublic(DeviceBase):
    """A device as the API shows it."""

    id: str
    device_type: str
    status: DeviceStatus
    online: bool
    last_seen_at: datetime | None
    presence_session: int | None
    current_version: str | None
    agent_version: str | None
    cert_serial: str | None
    cert_not_after: datetime | None
    # Set while the device is cut off at the broker for flooding its traffic budget.
    quarantined_until: datetime | None = None
    created_at: datetime
    updated_at: datetime


class HeartbeatPublic(BaseModel):
    """One stored heartbeat."""

    received_at: datetime
    sequence: int
    metrics: dict[str, Any]


class HeartbeatsPublic(BaseModel):
    """A device's most recent heartbeats, newest first."""

    data: list[HeartbeatPublic]
    count: int


class PresenceEventPublic(BaseModel):
    """One change of a device's presence."""

    at: datetime
    online: bool
    session: int | None = Field(description="The agent session it belongs to; none for `silent`.")
    reason: str | None = Field(
        description="Offline: `shutdown` (the agent said goodbye), `lost` (its Last Will), "
        "`silent` (nothing heard for the offline threshold). Online: none (its birth message) "
        "or `heartbeat` (a heartbeat of a newer session brought it back)."
    )


class PresenceHistoryPublic(BaseModel):
    """A device's presence changes, newest first."""

    data: list[PresenceEventPublic]
    count: int


class DevicesPublic(BaseModel):
    """A page of devices and the total matching the filters."""

    data: list[DevicePublic]
    count: int


PEM_MAX_CHARS = 16_384


class CertificateRequest(BaseModel):
    """Request to sign a device CSR (first provisioning or renewal)."""

    model_config = ConfigDict(extra="forbid")

    csr: str = Field(max_length=PEM_MAX_CHARS, description="PEM CSR whose CN is the device ID")
    device_type: Slug | None = Field(default=None, description="registers the device if it is new")
    name: Label | None = None
    days: int | None = Field(default=None, ge=1, le=825)
    # Renewal by the device itself, without an API key: its current certificate, and its
    # current key's signature over the new CSR (DER), base64.
    current_certificate: str | None = Field(default=None, max_length=PEM_MAX_CHARS)
    proof: str | None = Field(default=None, max_length=2048)


class CertificatePublic(BaseModel):
    """A freshly signed device certificate and the chain to trust."""

    device_id: str
    serial: str
    not_after: datetime
    certificate: str
    ca_chain: str


class RevokeRequest(BaseModel):
    """Which certificate to revoke: one serial (after rotation), or all (cut the device off)."""

    model_config = ConfigDict(extra="forbid")

    serial: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{1,40}$")
    reason: str = Field(
        default="unspecified",
        pattern=r"^(unspecified|keyCompromise|superseded|cessationOfOperation|affiliationChanged)$",
    )


class RevocationPublic(BaseModel):
    """The outcome of a revocation."""

    device_id: str
    revoked_serials: list[str]
    device_cut_off: bool
    broker_reloaded: bool
    session_ended: bool = Field(
        description="the device's open broker session was ended (taken over) as well"
    )


class QuarantinePublic(BaseModel):
    """The outcome of releasing a device from quarantine."""

    device_id: str
    quarantined_until: datetime | None
    broker_reloaded: bool
