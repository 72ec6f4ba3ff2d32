"""Where the time of a complete update goes: CPU per process and sampling profiles of the backend
and the simulated fleet while N devices go from notice to SUCCEEDED.

    py-spy must be on PATH (it is not a dependency of Kernex: `pip install py-spy`).
    .venv/bin/python bench/profile_complete.py [--devices 1000] [--seconds 40]

The stack is the benchmarks' (fleet_stack.py), the fleet `kernex-sim` at nice 10 as in
fleet_benchmarks.py. Once every device is online, a 1 MiB release is deployed to all of them;
py-spy samples the backend and every simulator process from the POST on (`--idle` off: only
time on the CPU). Each sample is charged to the innermost frame of our own code (kernex_*), so
"deployments/progress.py:apply" includes the database calls it waits on the CPU for; samples
with no frame of ours are charged to their innermost frame. A reading aid, not a figure for
BENCHMARKS.md: the figures come from fleet_benchmarks.py.
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
from cpu_roles import CpuMeter, processes_by_role
from fleet_benchmarks import TMPFS, wait_executions
from fleet_stack import FleetStack

MiB = 1024 * 1024


def frame_label(frame: str) -> str:
    """'apply (/x/kernex_backend/deployments/progress.py:120)' -> 'deployments/progress.py:apply'"""
    function, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{short}:{function}"


def charge(collapsed: Path) -> collections.Counter[str]:
    """Samples per innermost frame of our code (or innermost frame, if none is ours)."""
    totals: collections.Counter[str] = collections.Counter()
    if not collapsed.exists():
        return totals
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")  # outermost first
        ours = [f for f in frames if "(kernex_" in f or "/kernex_" in f]
        chosen = ours[-1] if ours else (frames[-1] if frames else "?")
        totals[frame_label(chosen)] += int(count)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40.0, help="how long py-spy samples")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(".build/profile-complete"))
    args = parser.parse_args()
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not on PATH (pip install py-spy)")
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="kernex-bench-profile-"))
    agent_state = Path(tempfile.mkdtemp(prefix="kernex-bench-agents-", dir=TMPFS))
    stack = FleetStack(root)
    sim = None
    lines: list[str] = []
    try:
        stack.start()
        ids = [f"bench-{i:05d}" for i in range(1, args.devices + 1)]
        stack.register(ids)
        sim = stack.start_sim(
            args.devices, ramp=max(10.0, args.devices / 100), agent_state_dir=agent_state
        )
        stack.wait_online(args.devices, timeout=1800)
        bundle = stack.upload("1.1.0", MiB)
        time.sleep(3)
        targets = {
            process.pid: role
            for process, role in processes_by_role(root).items()
            if role in ("backend", "simulator")
        }
        spies = {
            pid: subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(args.out / f"{role}-{pid}.txt"),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, role in targets.items()
        }
        meter = CpuMeter(root)
        meter.start()
        started = time.monotonic()
        deployment = stack.deploy(bundle, ids)
        wait_executions(stack, deployment, len(ids), ("succeeded",), timeout=1800)
        took = time.monotonic() - started
        used = meter.used()
        for spy in spies.values():
            spy.wait()
        lines.append(f"{args.devices} devices to SUCCEEDED (1 MiB) in {took:.1f} s; CPU seconds:")
        for role in sorted(used, key=lambda r: -used[r]):
            lines.append(f"  {used[role]:7.1f}  {role}")
        for role in ("backend", "simulator"):
            totals: collections.Counter[str] = collections.Counter()
            for pid, r in targets.items():
                if r == role:
                    totals += charge(args.out / f"{role}-{pid}.txt")
            total = sum(totals.values()) or 1
            lines.append(f"{role}: {total} samples at 100/s over the first {args.seconds:.0f} s")
            lines += [
                f"  {count / total:6.1%}  {label}" for label, count in totals.most_common(args.top)
            ]
    finally:
        if sim is not None:
            sim.send_signal(2)
            sim.wait(300)
        stack.stop()
        shutil.rmtree(agent_state, ignore_errors=True)
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
