"""Where a heartbeat's time goes in the backend: a sampling profile of `kernex-backend serve`
while it ingests a steady heartbeat load, summarised by stage; and what the whole host spends
per heartbeat, stored and bare.

    py-spy must be on PATH (it is not a dependency of Kernex: `pip install py-spy`).
    .venv/bin/python bench/profile_ingest.py [--devices 1000] [--rate 4000] [--seconds 30]

The stack is the benchmarks' (fleet_stack.py); the load is `heartbeat_load.py`'s. py-spy samples
every thread of the backend (`--idle` off: only time on the CPU) and writes collapsed stacks;
each sample is attributed to the first stage whose marker appears in its stack, innermost
first, so a stage's share is the CPU share of the work done on its behalf. The summary is
printed and written next to the raw stacks; it is a reading aid, not a figure for
BENCHMARKS.md.

The CPU budget: over the same window, the CPU time (user and system, from /proc) of every
process of the run, by role (backend, PostgreSQL, broker, the load processes, this process),
per heartbeat published. Then the backend is stopped and a bare subscriber (the ingest
benchmark's baseline, in this process) counts the same load at the same rate for as long.
Divided into the host's cores, each path's CPU per heartbeat bounds the rate this host can
carry it at, and so the ingest ratio it can show, whatever the code of any single process.
Samples py-spy marks idle are left out of the profile, but a thread waiting for a core is
not idle: on a busy host the profile also counts time the backend spent runnable.
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_roles import CpuMeter
from fleet_stack import FleetStack
from heartbeat_load import HeartbeatLoad, start_load

from kernex_protocol.topics import Channel

# (stage, markers): the first stage with a marker in a frame wins, innermost frames first.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("TLS (ssl)", ("ssl.py", "_ssl")),
    ("MQTT client (paho: packet parsing, acks)", ("paho/mqtt",)),
    ("aiomqtt (queueing to the event loop)", ("aiomqtt",)),
    ("payload parsing and validation", ("kernex_protocol/payloads", "kernex_protocol/limits")),
    ("JSON", ("json/decoder", "json/encoder", "json/__init__")),
    ("traffic budgets and counters", ("traffic_budgets", "core/messaging")),
    ("bridge dispatch", ("mqtt/bridge", "mqtt/handlers")),
    ("database driver (asyncpg)", ("asyncpg",)),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("write buffer and ingest", ("write_buffer", "telemetry/ingest")),
    ("presence and progress", ("devices/presence", "deployments/progress")),
    ("HTTP (uvicorn, starlette)", ("uvicorn", "starlette", "fastapi")),
    ("event loop (asyncio)", ("asyncio/",)),
    ("logging", ("structlog", "logging/")),
]


def stage_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for stage, markers in STAGES:
            if any(marker in frame for marker in markers):
                return stage
    return "other"


def summarise(collapsed: Path) -> list[tuple[str, int]]:
    totals: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            totals[stage_of(stack)] += int(count)
    return totals.most_common()


def budget_lines(name: str, used: dict[str, float], heartbeats: int, seconds: float) -> list[str]:
    total = sum(used.values())
    per = 1e6 / max(heartbeats, 1)
    cores = os.cpu_count() or 1
    return [
        f"{name}: {heartbeats} heartbeats in {seconds:.0f} s, {total:.1f} CPU s in all, "
        f"{total * per:.0f} us per heartbeat (this host's {cores} cores would carry at most "
        f"{cores * 1e6 / (total * per):.0f}/s):",
        *(
            f"  {cpu * per:7.1f} us  {role}"
            for role, cpu in sorted(used.items(), key=lambda item: -item[1])
        ),
    ]


def bare_budget(
    stack: FleetStack, load: HeartbeatLoad, meter: CpuMeter, seconds: float
) -> tuple[list[str], float]:
    """The backend stopped, a bare subscriber counting: CPU per heartbeat (lines, total us)."""
    stack.stop_backend()
    arrived = [0]

    def counted(_topic: str, _payload: bytes, _at: float) -> None:
        arrived[0] += 1

    with stack.subscriber("bare", Channel.HEARTBEAT, counted):
        time.sleep(5)  # warm
        meter.start()
        sent, got = load.published(), arrived[0]
        time.sleep(seconds)
        used = meter.used()
        sent, got = load.published() - sent, arrived[0] - got
    lines = budget_lines("bare subscriber", used, sent, seconds)
    lines.append(f"  ({got} of {sent} arrived at the subscriber)")
    return lines, sum(used.values()) * 1e6 / max(sent, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=4000.0, help="heartbeats per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path(".build/profile-ingest"))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not on PATH (pip install py-spy)")
    root = Path(tempfile.mkdtemp(prefix="kernex-bench-profile-"))
    args.out.mkdir(parents=True, exist_ok=True)
    stack = FleetStack.unbudgeted(root)
    load: HeartbeatLoad | None = None
    try:
        stack.start()
        _, load = start_load(stack, args.devices, args.processes)
        load.set_rate(args.rate)
        time.sleep(5)  # warm
        assert stack.backend is not None
        collapsed = args.out / "stacks.txt"
        stored_before = stack.sql("SELECT count(*) FROM heartbeats")[0][0]
        meter = CpuMeter(root, own="this process (bare subscriber)")
        meter.start()
        sent_before = load.published()
        subprocess.run(
            [
                py_spy,
                "record",
                "--pid",
                str(stack.backend.pid),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(collapsed),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
        )
        stored_used = meter.used()
        sent = load.published()
        stored = stack.sql("SELECT count(*) FROM heartbeats")[0][0] - stored_before
        budget = budget_lines("stored", stored_used, sent - sent_before, args.seconds)
        budget.append(f"  ({stored} of {sent - sent_before} stored by the end of the window)")
        if stored < 0.95 * (sent - sent_before):
            budget.append("  the backend fell behind: its figures are too low; lower --rate")
        stored_us = sum(stored_used.values()) * 1e6 / max(sent - sent_before, 1)
        bare, bare_us = bare_budget(stack, load, meter, args.seconds)
    finally:
        if load is not None:
            load.stop()
        stack.stop()
    rows = summarise(collapsed)
    total = sum(count for _, count in rows) or 1
    lines = [
        f"{args.rate:.0f} heartbeats/s offered from {args.devices} devices for {args.seconds:.0f} s"
        f" ({sent} published in all); {total} CPU samples of the backend at 200/s:",
        *(f"  {count / total:6.1%}  {stage}" for stage, count in rows),
        "",
        "CPU per heartbeat published, whole host, by role:",
        *budget,
        *bare,
        f"On this host the ingest ratio cannot exceed {bare_us / stored_us:.2f} "
        "(bare CPU per heartbeat over stored) while both are CPU-bound.",
    ]
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
