"""What a heartbeat says about the device: uptime and a few system metrics, all integers."""

import contextlib
import os
import resource
from pathlib import Path

from kernex_agent.files import disk_space


def system_uptime_s() -> int:
    """Seconds since the device booted."""
    try:
        return int(float(Path("/proc/uptime").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return 0


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                values[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def system_metrics(disk_path: Path) -> dict[str, int]:
    """Load, memory, disk and the agent's own footprint, as integers (see docs/protocol.md)."""
    metrics: dict[str, int] = {}
    with contextlib.suppress(OSError):
        metrics["load1_milli"] = int(os.getloadavg()[0] * 1000)
    memory = _meminfo()
    if "MemTotal" in memory:
        metrics["mem_total_kib"] = memory["MemTotal"]
    if "MemAvailable" in memory:
        metrics["mem_available_kib"] = memory["MemAvailable"]
    try:
        usage = disk_space(disk_path if disk_path.exists() else disk_path.anchor or "/")
        metrics["disk_free_kib"] = usage.free // 1024
        metrics["disk_total_kib"] = usage.total // 1024
    except OSError:
        pass
    metrics["agent_max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return metrics
