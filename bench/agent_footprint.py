"""Benchmark: the device agent's idle footprint (memory and CPU), against a bare interpreter.

Starts our Mosquitto with its mTLS configuration, provisions devices, runs `kernex-agent`
processes connected and idle (heartbeats at the default 30 s), and after a settling period
samples each one's RSS and the CPU it uses over a window. The baseline, measured in the same
run, is a bare `python -c` process sleeping: the interpreter's own floor.

    .venv/bin/python bench/agent_footprint.py [--agents 3] [--settle-s 10] [--window-s 120]
        [--against-tree DIR] [--install device|dev]

Every process runs from an agent installed as on a device (device-agent/README.md: a venv holding
kernex-agent and its dependencies, no editable installs): the development venv's seven
editable-install finders load importlib, pathlib and urllib.parse into every interpreter at
start-up, some 1.8 MiB a device never carries. `--install dev` measures in the development venv
instead, as the rows before 2026-12-05 did.

--against-tree runs as many agents again from another checkout's code, interleaved with these in
the same run: a change's saving is smaller than the figure's drift between runs on a busy host,
so it is read side by side.
"""

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import Figure, median, record

from kernex_devstack.broker import EmbeddedBroker
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.kit import BrokerAddress, write_kit

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
# Our distributions the agent installs, and where their package is in a checkout.
OUR_PACKAGES = {
    "kernex-agent": Path("device-agent/kernex_agent"),
    "kernex-protocol": Path("protocol/kernex_protocol"),
}
# kernex_agent first: its package defers what its dependencies import and never use (lazy_modules).
FLOOR_IMPORTS = "import kernex_agent, asyncio, ssl, paho.mqtt.client"
FLOOR = (
    f"{FLOOR_IMPORTS}; context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); "
    "import time; time.sleep(3600)"
)


def _agent_distributions() -> list[importlib.metadata.Distribution]:
    """kernex-agent and everything it requires on this interpreter, extras left out."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = ["kernex-agent"]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found[name] = importlib.metadata.distribution(name)
        for line in found[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def device_install(dest: Path, code_tree: Path) -> Path:
    """A venv holding the agent as a device does; its interpreter.

    Third-party packages are copied file by file from this venv's install records (what pip
    installed); our two packages from `code_tree`'s sources, then everything byte-compiled, as
    pip does at install time.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for dist in _agent_distributions():
        name = dist.metadata["Name"]
        if name in OUR_PACKAGES:
            package = OUR_PACKAGES[name]
            shutil.copytree(
                code_tree / package,
                site / package.name,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            continue
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            raise SystemExit(f"{name} is installed editable here: cannot copy it to a device")
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts outside site-packages; bytecode is compiled below
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file.locate(), target)
    subprocess.run([str(python), "-m", "compileall", "-q", str(site)], check=True)
    return python


def start_agent(
    broker: EmbeddedBroker, root: Path, index: int, python: Path
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
    return subprocess.Popen(
        [str(python), "-m", "kernex_agent", "--config", str(kit / "agent.toml")],
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
    parser.add_argument(
        "--install",
        choices=("device", "dev"),
        default="device",
        help="run from a venv as on a device (default) or from this development venv",
    )
    args = parser.parse_args()
    n = args.agents
    other = args.against_tree.resolve() if args.against_tree else None
    if other is not None and not (other / "device-agent" / "kernex_agent").is_dir():
        raise SystemExit(f"{other} is not a Kernex checkout")

    with tempfile.TemporaryDirectory(prefix="kernex-bench-agent-") as tmp:
        root = Path(tmp)
        if args.install == "device":
            python = device_install(root / "device-venv", REPO)
            other_python = device_install(root / "other-venv", other) if other else None
        else:
            python = Path(sys.executable)
            other_python = None
            if other is not None:
                raise SystemExit("--against-tree runs from a device install: leave --install")
        broker = EmbeddedBroker(root / "broker")
        broker.start()
        try:
            agents = []
            others = []
            for i in range(n):  # interleaved, so neither group starts on a quieter host
                agents.append(start_agent(broker, root, i, python))
                if other_python is not None:
                    others.append(start_agent(broker, root, n + i, other_python))
            baselines = [
                subprocess.Popen([str(python), "-c", "import time; time.sleep(3600)"])
                for _ in range(args.agents)
            ]
            floors = [subprocess.Popen([str(python), "-c", FLOOR]) for _ in range(args.agents)]
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
    where = (
        "installed as on a device (a venv holding kernex-agent and its dependencies, "
        "byte-compiled, no editable installs; the baseline and floor run from it too)"
        if args.install == "device"
        else "run from the development venv (its editable-install finders load at start-up)"
    )
    notes = [
        f"{n} agents connected over mTLS to our Mosquitto, idle (heartbeat every 30 s), {where}, "
        f"measured {args.window_s:.0f} s after {args.settle_s:.0f} s of settling; medians.",
        "Baseline: a bare interpreter (`python -c 'import time; time.sleep(3600)'`) in the same "
        "run: the floor any Python agent starts from.",
        "Library floor (same run): an interpreter that only imports what an MQTT agent over TLS "
        f"on asyncio cannot do without (`{FLOOR_IMPORTS}`: the event loop, OpenSSL, paho "
        "with the standard modules it and they import but an idle agent never uses deferred, as "
        "the agent does (lazy_modules.py)), holds one TLS client "
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
    ) + (" --install dev" if args.install == "dev" else "")
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
