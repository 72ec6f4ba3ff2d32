"""Benchmark: the device agent's idle footprint (memory and CPU), against a bare interpreter.

Starts our Mosquitto with its mTLS configuration, provisions devices, runs `kernex-agent`
processes connected and idle (heartbeats at the default 30 s), and after a settling period
samples each one's RSS and the CPU it uses over a window. The baseline, measured in the same
run, is a bare `python -c` process sleeping: the interpreter's own floor.

    .venv/bin/python bench/agent_footprint.py [--agents 3] [--settle-s 10] [--window-s 120]
        [--against-tree DIR]

--against-tree runs as many agents again from another checkout's code (its device-agent and
protocol folders first on PYTHONPATH), interleaved with these in the same run: a change's saving
is smaller than the figure's drift between runs on a busy host, so it is read side by side.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import Figure, median, record

from kernex_devstack.broker import EmbeddedBroker
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.kit import BrokerAddress, write_kit

MiB = 1024 * 1024
# kernex_agent first: its package defers what paho imports and never uses (lazy_modules).
FLOOR_IMPORTS = "import kernex_agent, asyncio, ssl, paho.mqtt.client"
FLOOR = (
    f"{FLOOR_IMPORTS}; context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); "
    "import time; time.sleep(3600)"
)


def start_agent(
    broker: EmbeddedBroker, root: Path, index: int, code_tree: Path | None = None
) -> subprocess.Popen[bytes]:
    device_id = f"bench-agent-{index}"
    key = new_key()
    cert = broker.authority.issue(
        key.public_key(), kind=CertificateKind.DEVICE, common_name=device_id, days=1
    )
    kit = root / device_id
    write_kit(
        kit,
        broker.authority,
        device_id=device_id,
        device_type="bench-board",
        certificate=cert,
        key=key,
        broker=BrokerAddress("localhost", broker.port),
    )
    env = {
        "KERNEX_AGENT_UPDATE__STATE_DIR": str(kit / "state"),
        "KERNEX_AGENT_UPDATE__INSTALL_ROOT": str(kit / "app"),
        "KERNEX_AGENT_TELEMETRY__START_JITTER": "false",
        "PATH": "/usr/bin:/bin",
    }
    if code_tree is not None:
        env["PYTHONPATH"] = f"{code_tree / 'device-agent'}:{code_tree / 'protocol'}"
    return subprocess.Popen(
        [sys.executable, "-m", "kernex_agent", "--config", str(kit / "agent.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(kit / "agent.log").open("wb"),
    )


def measure(
    processes: list[subprocess.Popen[bytes]], settle_s: float, window_s: float
) -> tuple[list[float], list[float]]:
    """RSS (MiB) after settling, and CPU seconds per hour over the window, per process."""
    handles = [psutil.Process(p.pid) for p in processes]
    time.sleep(settle_s)
    before = [sum(h.cpu_times()[:2]) for h in handles]
    time.sleep(window_s)
    cpu = [
        (sum(h.cpu_times()[:2]) - b) * 3600 / window_s for h, b in zip(handles, before, strict=True)
    ]
    rss = [h.memory_info().rss / MiB for h in handles]
    for process in processes:
        if process.poll() is not None:
            raise SystemExit(f"process {process.pid} died during the measurement")
    return rss, cpu


def _describe(tree: Path) -> str:
    """The checkout's commit, for the record."""
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"commit {head.stdout.strip()}" if head.returncode == 0 else str(tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=120.0)
    parser.add_argument("--against-tree", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    n = args.agents
    other = args.against_tree.resolve() if args.against_tree else None
    if other is not None and not (other / "device-agent" / "kernex_agent").is_dir():
        raise SystemExit(f"{other} is not a Kernex checkout")

    with tempfile.TemporaryDirectory(prefix="kernex-bench-agent-") as tmp:
        root = Path(tmp)
        broker = EmbeddedBroker(root / "broker")
        broker.start()
        try:
            agents = []
            others = []
            for i in range(n):  # interleaved, so neither group starts on a quieter host
                agents.append(start_agent(broker, root, i))
                if other is not None:
                    others.append(start_agent(broker, root, n + i, other))
            baselines = [
                subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
                for _ in range(args.agents)
            ]
            floors = [subprocess.Popen([sys.executable, "-c", FLOOR]) for _ in range(args.agents)]
            try:
                rss, cpu = measure(
                    agents + baselines + floors + others, args.settle_s, args.window_s
                )
            finally:
                for process in agents + baselines + floors + others:
                    process.terminate()
                    process.wait(30)
            connected = sum(
                "mqtt.connected" in (root / f"bench-agent-{i}" / "agent.log").read_text()
                for i in range(len(agents) + len(others))
            )
            if connected != len(agents) + len(others):
                raise SystemExit(
                    f"only {connected} of {len(agents) + len(others)} agents connected"
                )
        finally:
            broker.stop()

    agent_rss, base_rss, floor_rss = (
        median(rss[:n]),
        median(rss[n : 2 * n]),
        median(rss[2 * n : 3 * n]),
    )
    agent_cpu, base_cpu = median(cpu[:n]), median(cpu[n : 2 * n])
    figures = [
        Figure("agent.idle_rss_mib", agent_rss, "MiB", base_rss, round(agent_rss / base_rss, 2)),
        Figure("agent.library_floor_rss_mib", floor_rss, "MiB", base_rss, None),
        Figure("agent.own_rss_mib", round(agent_rss - floor_rss, 2), "MiB", None, None),
        Figure("agent.idle_cpu_s_per_hour", agent_cpu, "CPU s/h", base_cpu, None),
    ]
    notes = [
        f"{n} agents connected over mTLS to our Mosquitto, idle (heartbeat every 30 s), measured "
        f"{args.window_s:.0f} s after {args.settle_s:.0f} s of settling; medians.",
        "Baseline: a bare interpreter (`python -c 'import time; time.sleep(3600)'`) in the same "
        "run: the floor any Python agent starts from.",
        "Library floor (same run): an interpreter that only imports what an MQTT agent over TLS "
        f"on asyncio cannot do without (`{FLOOR_IMPORTS}`: the event loop, OpenSSL, paho "
        "without the urllib.request it never uses, which the agent defers), holds one TLS client "
        "context (OpenSSL's own start-up) and sleeps; "
        "agent.own_rss_mib is the idle agent above that floor: Kernex's own code and state.",
        "Per agent RSS (MiB): "
        + ", ".join(f"{v:.1f}" for v in rss[:n])
        + "; CPU s/h: "
        + ", ".join(f"{v:.2f}" for v in cpu[:n])
        + ".",
    ]
    command = (
        f".venv/bin/python bench/agent_footprint.py --agents {n} --settle-s {args.settle_s:.0f} "
        f"--window-s {args.window_s:.0f}"
    )
    if other is not None:
        other_rss = median(rss[3 * n :])
        notes.append(
            f"Against {_describe(other)} in the same run ({n} agents started alternately with "
            f"these): idle RSS {other_rss:.2f} MiB (per agent "
            + ", ".join(f"{v:.1f}" for v in rss[3 * n :])
            + f"); this code {agent_rss - other_rss:+.2f} MiB."
        )
        command += f" --against-tree {other}"
    record("Device agent idle footprint", command, figures, notes)


if __name__ == "__main__":
    main()
