"""The heartbeats table, range-partitioned by day on received_at.

10,000 devices beating every 30 s write about 29 million rows a day. Appends go to one small
current partition, and retention drops whole partitions (a catalog operation) instead of running
a table-wide DELETE that would bloat the table and hammer the WAL. See docs/architecture.md.
Partitions are created and dropped by telemetry/partitions.py, not by migrations.
"""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


class Heartbeat(SQLModel, table=True):
    """One heartbeat as received from a device."""

    __tablename__ = "heartbeats"
    __table_args__ = {"postgresql_partition_by": "RANGE (received_at)"}

    # No foreign key to devices: it would cost a lookup per appended row, and rows of removed
    # devices age out with their partitions anyway.
    device_id: str = Field(primary_key=True, max_length=64)
    received_at: datetime = Field(primary_key=True, sa_type=sa.DateTime(timezone=True))
    sequence: int = Field(primary_key=True, sa_type=sa.BigInteger)
    # With device_id and sequence, what makes a heartbeat unique. Null on rows stored before
    # the column existed: their session is in metrics["session"].
    session: int | None = Field(default=None, sa_type=sa.BigInteger)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSONB, nullable=False)
