"""Benchmark: what a stored heartbeat costs on disk, and what a day's partition weighs.

docs/scaling.md sizes the heartbeat partitions and their retention from this. Heartbeats are
built the way the agent builds them (its own system metrics of this host, an update state, the
versions) and stored through the backend's real ingest statement (telemetry/ingest.py) into a
real PostgreSQL (the embedded one) migrated to head, in the order a fleet sends them: every
device's heartbeat of one interval, then the next interval's, so the primary key (device first)
grows the way it does under real traffic, not in sorted order. After a VACUUM ANALYZE the
partition's heap, TOAST and index sizes are read from PostgreSQL.

The baseline, from the same heartbeats, is the size of the MQTT payload each one arrived in:
the ratio says how much a stored heartbeat weighs against what the device sent.

    .venv/bin/python bench/heartbeat_storage.py [--devices 2000] [--intervals 60]
"""

import argparse
import asyncio
import datetime as dt
import statistics
import sys
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import Figure, record
from scratch_db import migrated_with_devices, scratch_postgres

import kernex_agent
from kernex_agent.reporting import utc_now_text
from kernex_agent.telemetry import system_metrics, system_uptime_s
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.telemetry.ingest import HeartbeatIngest, Received
from kernex_backend.telemetry.partitions import maintain_now, partition_name
from kernex_protocol.payloads import Heartbeat

REPO = Path(__file__).resolve().parent.parent
BATCH = 500
INTERVAL_S = 30  # the agent's default heartbeat interval
SECONDS_PER_DAY = 86_400
MIB = 1024 * 1024


def heartbeat(seq: int, started: int) -> Heartbeat:
    """One heartbeat as the agent sends it (kernex_agent/agent.py, `_heartbeats`)."""
    metrics = system_metrics(Path("/"))
    metrics["agent_uptime_s"] = seq * INTERVAL_S
    return Heartbeat(
        seq=seq,
        session=started,
        sent_at=utc_now_text(),
        uptime_s=system_uptime_s() + seq * INTERVAL_S,
        agent_version=kernex_agent.__version__,
        installed_version="1.4.2",
        metrics=metrics,
        update_state="idle",
        last_error=None,
    )


async def measure(url: str, devices: int, intervals: int) -> dict[str, float]:
    settings, engine, ids = await migrated_with_devices(url, devices)
    await maintain_now(engine, settings.telemetry)

    stats = TrafficCounters()
    ingest = HeartbeatIngest(engine, stats, batch_size=BATCH, interval_s=1.0, capacity=BATCH)
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    wire: list[int] = []
    batch: list[Received] = []
    for tick in range(intervals):
        for index, device_id in enumerate(ids):
            beat = heartbeat(tick, started=1_000 + index)
            wire.append(len(beat.to_payload()))
            # Spread over the interval as a fleet's jittered heartbeats are, all within today.
            offset = tick * INTERVAL_S + INTERVAL_S * index / devices
            batch.append(Received(device_id, beat, today + dt.timedelta(seconds=offset)))
            if len(batch) == BATCH:
                await ingest.write(batch)
                batch = []
    if batch:
        await ingest.write(batch)
    await engine.dispose()

    partition = partition_name(today.date())
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f"VACUUM ANALYZE {partition}")
        rows = await conn.fetchval(f"SELECT count(*) FROM {partition}")
        heap, toast, indexes, total = await conn.fetchrow(
            "SELECT pg_relation_size($1), coalesce(pg_total_relation_size(reltoastrelid), 0),"
            " pg_indexes_size($1), pg_total_relation_size($1)"
            " FROM pg_class WHERE oid = $1::regclass",
            partition,
        )
    finally:
        await conn.close()
    if rows != devices * intervals:  # a run that did not store every heartbeat measures nothing
        raise SystemExit(f"stored {rows} of {devices * intervals} heartbeats")
    return {
        "rows": rows,
        "heap": heap / rows,
        "toast": toast / rows,
        "indexes": indexes / rows,
        "total": total / rows,
        "wire": statistics.median(wire),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--intervals", type=int, default=60)
    args = parser.parse_args()
    with scratch_postgres("kernex-bench-storage-") as url:
        sizes = asyncio.run(measure(url, args.devices, args.intervals))

    per_row = sizes["total"]
    rows_per_device_day = SECONDS_PER_DAY // INTERVAL_S
    day_10k = per_row * rows_per_device_day * 10_000
    figures = [
        Figure(
            "heartbeat.stored_bytes",
            round(per_row, 1),
            "B",
            round(sizes["wire"], 1),
            round(per_row / sizes["wire"], 2),
        ),
        Figure("heartbeat.partition_mib_10k_devices_day", round(day_10k / MIB), "MiB"),
    ]
    notes = [
        f"{args.devices} devices x {args.intervals} heartbeats ({int(sizes['rows']):,} rows) "
        "built as the agent builds them (this host's system metrics), stored through the "
        "backend's ingest statement in batches of 500, interleaved by interval as a fleet sends "
        "them; sizes read after VACUUM ANALYZE.",
        f"Per stored heartbeat: heap {sizes['heap']:.1f} B, indexes {sizes['indexes']:.1f} B, "
        f"TOAST {sizes['toast']:.1f} B; baseline: the median MQTT payload of the same "
        f"heartbeats, {sizes['wire']:.0f} B.",
        f"At one heartbeat per {INTERVAL_S} s ({rows_per_device_day:,} a device a day): a day's "
        f"partition for 10,000 devices is {day_10k / MIB:,.0f} MiB; with the default retention "
        f"(14 whole days and today's) at most {day_10k * 15 / 1024**3:,.0f} GiB for 10,000 "
        f"devices, {day_10k * 150 / 1024**3:,.0f} GiB for 100,000.",
    ]
    record(
        "Heartbeat storage",
        f".venv/bin/python bench/heartbeat_storage.py --devices {args.devices} "
        f"--intervals {args.intervals}",
        figures,
        notes,
    )


if __name__ == "__main__":
    main()
