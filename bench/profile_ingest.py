"""Where a heartbeat's time goes in the backend: a sampling profile of `kernex-backend serve`
while it ingests a steady heartbeat load, summarised by stage.

    py-spy must be on PATH (it is not a dependency of Kernex: `pip install py-spy`).
    .venv/bin/python bench/profile_ingest.py [--devices 1000] [--rate 4000] [--seconds 30]

The stack is the benchmarks' (fleet_stack.py); the load is `heartbeat_load.py`'s. py-spy samples
every thread of the backend (`--idle` off: only time on the CPU) and writes collapsed stacks;
each sample is attributed to the first stage whose marker appears in its stack, innermost
first, so a stage's share is the CPU share of the work done on its behalf. The summary is
printed and written next to the raw stacks; it is a reading aid, not a figure for
BENCHMARKS.md.
"""

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_stack import FleetStack
from heartbeat_load import HeartbeatLoad, start_load

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
        sent = load.published()
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
    ]
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
