"""The devices table."""

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from kernex_backend.core.columns import created_at_field, enum_field, optional_timestamp_field


class DeviceStatus(StrEnum):
    """Lifecycle of a device record."""

    REGISTERED = "registered"  # known to us, never connected
    ACTIVE = "active"  # has connected at least once
    DECOMMISSIONED = "decommissioned"  # retired: refused by broker and backend


class Device(SQLModel, table=True):
    """A device of the fleet, keyed by the ID in its certificate."""

    __tablename__ = "devices"
    __table_args__ = (
        sa.Index("ix_devices_tags", "tags", postgresql_using="gin"),
        sa.Index("ix_devices_status_device_type", "status", "device_type"),
    )

    id: str = Field(primary_key=True, max_length=64)
    name: str | None = Field(default=None, max_length=128)
    device_type: str = Field(max_length=64, index=True)
    tags: dict[str, str] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
    status: DeviceStatus = enum_field(DeviceStatus, DeviceStatus.REGISTERED, name="device_status")
    online: bool = Field(default=False, nullable=False)
    last_seen_at: datetime | None = optional_timestamp_field()
    # Grows with every agent (re)connect; orders presence messages (see docs/protocol.md).
    presence_session: int | None = Field(default=None, sa_type=sa.BigInteger)
    # When presence_session was applied: an old claim stops outranking lower sessions.
    presence_at: datetime | None = optional_timestamp_field()
    # The newest heartbeat, as (session, seq): the device's latest fields follow it forward
    # only. A lower session replaces it after a silence (a claim nothing backed).
    heartbeat_session: int | None = Field(default=None, sa_type=sa.BigInteger)
    heartbeat_seq: int | None = Field(default=None, sa_type=sa.BigInteger)
    # The highest (session, seq) ever stored; never moves back. A heartbeat above it and above
    # the newest is certainly not stored yet, so only the others are looked up as duplicates.
    heartbeat_high_session: int | None = Field(default=None, sa_type=sa.BigInteger)
    heartbeat_high_seq: int | None = Field(default=None, sa_type=sa.BigInteger)
    current_version: str | None = Field(default=None, max_length=64, index=True)
    agent_version: str | None = Field(default=None, max_length=64)
    cert_serial: str | None = Field(default=None, max_length=64)
    cert_not_after: datetime | None = optional_timestamp_field()
    # While in the future, the device is cut off at the broker for flooding its traffic budget.
    quarantined_until: datetime | None = optional_timestamp_field()
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()


class PresenceEvent(SQLModel, table=True):
    """One change of a device's presence as applied: online, offline with the reason the agent
    gave ("shutdown", "lost"), or offline because the sweeper heard nothing ("silent").

    Written in the transaction that applies the change, so the history and the device's
    `online` never disagree; pruned after `telemetry.presence_retention_days`. No foreign key,
    as for heartbeats: rows of a removed device age out with the retention.
    """

    __tablename__ = "presence_events"
    __table_args__ = (
        sa.Index("ix_presence_events_device_id_at", "device_id", "at"),
        sa.Index("ix_presence_events_at", "at"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    device_id: str = Field(max_length=64)
    at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    online: bool
    session: int | None = Field(default=None, sa_type=sa.BigInteger)
    reason: str | None = Field(default=None, max_length=32)
