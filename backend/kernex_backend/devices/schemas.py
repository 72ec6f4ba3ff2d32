"""API shapes for devices."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from kernex_backend.core.text import DeviceId, Label, Slug, TagKey, TagValue
from kernex_backend.devices.models import DeviceStatus

MAX_TAGS = 32
Tags = dict[TagKey, TagValue]


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
    created_at: datetime
    updated_at: datetime


class DevicesPublic(BaseModel):
    """A page of devices and the total matching the filters."""

    data: list[DevicePublic]
    count: int
