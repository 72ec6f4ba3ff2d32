"""Benchmark: applying devices' progress reports, against the same rows written bare.

A fleet's update sends several progress reports per device within seconds, and the backend
applies them in batches (deployments/progress.py): lock the executions, walk each one's reports
by the ingest rules, write the changed rows, settle finished deployments. This measures that
path alone against a real PostgreSQL (the embedded one, durable), without MQTT or the simulator
that bound the fleet benchmarks on this machine: N devices each send five reports
(downloading, verifying, installing, health check, committed), each round shuffled, applied
in batches of 500; the last round is final (the installed version recorded, the deployment
settled and at the end completed).

The baseline, measured in the same run on the same database, is the least any implementation
must do for the same effect: per batch one transaction through asyncpg that locks the same
executions and writes the same columns with one executemany (for final reports also the
devices' installed version, and a count of the deployment's unfinished executions), no rules
and no SQLAlchemy.
Figures are the backend process's CPU and the wall time per report, medians over the repeats,
each repeat a new deployment to the same devices.

    .venv/bin/python bench/progress_benchmark.py [--devices 5000] [--repeats 3]
"""

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import Figure, median, record
from scratch_db import migrated_with_devices, scratch_postgres

from kernex_backend.core.db import create_sessionmaker
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.deployments.models import (
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_backend.deployments.progress import EXECUTION_STATE, ProgressIngest
from kernex_protocol.payloads import Progress, ProgressState

REPO = Path(__file__).resolve().parent.parent
BATCH = 500
STATES = (
    ProgressState.DOWNLOADING,
    ProgressState.VERIFYING,
    ProgressState.INSTALLING,
    ProgressState.HEALTH_CHECK,
    ProgressState.COMMITTED,
)

# The bare path: lock the batch's executions, write the columns a report sets.
LOCK = """
SELECT id, device_id FROM deployment_executions
WHERE (deployment_id, device_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
ORDER BY id FOR UPDATE
"""
WRITE = """
UPDATE deployment_executions SET state = $2, device_state = $3, report_seq = $4,
  reported_at = now(), updated_at = now(), started_at = coalesce(started_at, now()), progress = $5,
  finished_at = CASE WHEN $6 THEN now() ELSE finished_at END
WHERE id = $1
"""
INSTALLED = "UPDATE devices SET current_version = $2, updated_at = now() WHERE id = $1"
UNFINISHED = """
SELECT count(*) FROM deployment_executions
WHERE deployment_id = $1 AND state <> ALL($2::text[])
"""
TERMINAL = [state.value for state in ExecutionState if state.terminal]


def reports(deployment: uuid.UUID, devices: list[str], seed: int) -> list[tuple[str, Progress]]:
    """Five reports per device, each round shuffled: the order they reach the backend in."""
    out: list[tuple[str, Progress]] = []
    for seq, state in enumerate(STATES, start=1):
        block = [
            (
                d,
                Progress(
                    str(deployment),
                    state,
                    seq=seq,
                    sent_at="t",
                    percent=None if state == ProgressState.COMMITTED else seq * 20,
                    version="2.0.0" if state == ProgressState.COMMITTED else None,
                ),
            )
            for d in devices
        ]
        random.Random(seed * 10 + seq).shuffle(block)
        out += block
    return out


async def new_deployment(sessionmaker: Any, devices: list[str]) -> uuid.UUID:
    """A running deployment with a NOTIFIED execution per device."""
    async with sessionmaker() as session:
        deployment = Deployment(
            name="bench",
            target={"device_ids": devices},
            status=DeploymentStatus.RUNNING,
            created_by="bench",
        )
        session.add(deployment)
        await session.flush()
        for device_id in devices:
            session.add(
                DeploymentExecution(
                    deployment_id=deployment.id,
                    device_id=device_id,
                    state=ExecutionState.NOTIFIED,
                )
            )
        await session.commit()
        deployment_id: uuid.UUID = deployment.id
        return deployment_id


async def product(ingest: ProgressIngest, batch: list[tuple[str, Progress]]) -> None:
    await ingest.apply_batch(batch)


async def bare(pool: asyncpg.Pool, batch: list[tuple[str, Progress]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # The last report per device wins, as the rules would have it for in-order reports.
        last = {device: progress for device, progress in batch}
        deployment = uuid.UUID(next(iter(last.values())).deployment_id)
        rows = await conn.fetch(LOCK, [deployment] * len(last), list(last))
        writes = []
        final = []
        for row in rows:
            report = last[row["device_id"]]
            done = report.version is not None
            if done:
                final.append((row["device_id"], report.version))
            writes.append(
                (
                    row["id"],
                    EXECUTION_STATE[report.state].value,
                    report.state.value,
                    report.seq,
                    100 if done else report.percent or 0,
                    done,
                )
            )
        await conn.executemany(WRITE, writes)
        if final:
            await conn.executemany(INSTALLED, final)
            await conn.fetchval(UNFINISHED, deployment, TERMINAL)


async def timed(apply: Any, batches: list[list[tuple[str, Progress]]]) -> tuple[float, float]:
    """CPU and wall microseconds per report over all batches."""
    count = sum(len(b) for b in batches)
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        await apply(batch)
    return (
        (time.process_time() - cpu) / count * 1e6,
        (time.perf_counter() - wall) / count * 1e6,
    )


async def run(url: str, devices: int, repeats: int) -> dict[str, list[float]]:
    _, engine, ids = await migrated_with_devices(url, devices)
    sessionmaker = create_sessionmaker(engine)

    async def on_final(_: list[str]) -> None:
        return None

    ingest = ProgressIngest(sessionmaker, TrafficCounters(), on_final=on_final)
    pool = await asyncpg.create_pool(
        url.replace("postgresql+asyncpg", "postgresql"), min_size=1, max_size=4
    )
    results: dict[str, list[float]] = {"cpu": [], "wall": [], "bare_cpu": [], "bare_wall": []}
    try:
        for repeat in range(repeats):
            # Product and bare alternate, each on a deployment of its own.
            for name, apply in (
                ("", lambda b: product(ingest, b)),
                ("bare_", lambda b: bare(pool, b)),
            ):
                deployment = await new_deployment(sessionmaker, ids)
                stream = reports(deployment, ids, repeat)
                batches = [stream[i : i + BATCH] for i in range(0, len(stream), BATCH)]
                cpu, wall = await timed(apply, batches)
                succeeded = await pool.fetchval(
                    "SELECT count(*) FROM deployment_executions "
                    "WHERE deployment_id = $1 AND state = 'succeeded' AND report_seq = $2",
                    deployment,
                    len(STATES),
                )
                if succeeded != len(ids):  # a run that did not do the work measures nothing
                    raise SystemExit(f"{name or 'product'}: {succeeded} of {len(ids)} succeeded")
                results[f"{name}cpu"].append(cpu)
                results[f"{name}wall"].append(wall)
                print(f"repeat {repeat + 1} {name or 'product_'}: {cpu:.0f} us CPU, {wall:.0f} us")
    finally:
        await pool.close()
        await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with scratch_postgres("kernex-bench-progress-") as url:
        results = asyncio.run(run(url, args.devices, args.repeats))
    cpu, wall = median(results["cpu"]), median(results["wall"])
    bare_cpu, bare_wall = median(results["bare_cpu"]), median(results["bare_wall"])
    figures = [
        Figure(
            "progress.apply_cpu_us",
            round(cpu, 1),
            "us",
            round(bare_cpu, 1),
            round(cpu / bare_cpu, 2),
        ),
        Figure(
            "progress.apply_wall_us",
            round(wall, 1),
            "us",
            round(bare_wall, 1),
            round(wall / bare_wall, 2),
        ),
    ]
    notes = [
        f"{args.devices} devices x {len(STATES)} reports (the last one final), shuffled per "
        f"round, applied in batches of {BATCH} by ProgressIngest.apply_batch; medians of "
        f"{args.repeats} repeats, per report.",
        "Baseline (same run, same database, alternating with the product): one asyncpg "
        "transaction per batch that locks the same executions and writes the same columns with "
        "one executemany; for final reports also the devices' installed version and a count of "
        "the deployment's unfinished executions.",
        "CPU is the benchmark process's (the backend's side); PostgreSQL's own is not counted.",
        "Per repeat CPU us (product / bare): "
        + ", ".join(
            f"{a:.0f}/{b:.0f}" for a, b in zip(results["cpu"], results["bare_cpu"], strict=True)
        )
        + ".",
    ]
    command = (
        f".venv/bin/python bench/progress_benchmark.py --devices {args.devices} "
        f"--repeats {args.repeats}"
    )
    record("Progress: reports applied against the same rows written bare", command, figures, notes)


if __name__ == "__main__":
    main()
