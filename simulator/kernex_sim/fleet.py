"""The simulated fleet's plan: device IDs, their certificates (issued in bulk, cached), their
faults, and the slices each worker process runs."""

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernex_provision.authority import CertificateAuthority, pem, write_private_key, write_public
from kernex_provision.certificates import new_key


@dataclass(frozen=True, slots=True)
class Faults:
    """Shares of the fleet (0..1) that misbehave, and how."""

    fail_install: float = 0.0  # installs fail, the agent rolls back
    fail_health: float = 0.0  # health checks fail, the agent rolls back
    slow_download: float = 0.0  # downloads capped at slow_download_bps
    slow_download_bps: int = 64 * 1024
    reboot_mid_update: float = 0.0  # the device "loses power" right after INSTALLING starts
    offline: float = 0.0  # the device drops off every offline_every_s for offline_for_s
    offline_every_s: float = 120.0
    offline_for_s: float = 30.0
    # With a version here, install and health failures strike only that version (a bad release
    # on a share of the fleet); other versions, a rollback to the one before, install cleanly.
    bad_version: str | None = None


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated device and the faults it was dealt."""

    device_id: str
    home: str  # its directory: certificate, key, agent state
    fail_install: bool = False
    fail_health: bool = False
    slow_download: bool = False
    reboot_mid_update: bool = False
    offline: bool = False


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything one worker process needs (picklable)."""

    index: int
    devices: list[SimDevice]
    broker_host: str
    broker_port: int
    ca_chain: str
    trusted_keys_dir: str
    notice_keys_dir: str
    products: tuple[str, ...]
    device_type: str
    heartbeat_s: float
    heartbeat_padding: int  # extra integer metrics per heartbeat, to vary the payload size
    ramp_per_s: float  # connection starts per second, for this worker
    faults: Faults = field(default_factory=Faults)
    report_s: float = 1.0
    # Where agents keep their state (default: beside each device's certificate). A tmpfs
    # takes the simulated devices' fsyncs off the host's disk, which thousands of devices on
    # one machine would otherwise queue on.
    agent_state_root: str | None = None


def device_ids(prefix: str, count: int) -> list[str]:
    """Stable, sortable IDs: sim-00001, sim-00002, ..."""
    width = max(5, len(str(count)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, count + 1)]


def ensure_certificates(
    authority: CertificateAuthority, root: Path, ids: list[str], *, days: int = 30
) -> None:
    """Give every device a key and certificate under root/<id>/, issuing only missing ones."""
    missing = [i for i in ids if not (root / i / "device.crt").exists()]
    if not missing:
        return
    keys = {i: new_key() for i in missing}
    certificates = authority.issue_devices([(i, keys[i].public_key()) for i in missing], days=days)
    for device_id, certificate in zip(missing, certificates, strict=True):
        folder = root / device_id
        folder.mkdir(parents=True, exist_ok=True)
        write_private_key(folder / "device.key", keys[device_id])
        write_public(folder / "device.crt", pem(certificate))


def deal_faults(ids: list[str], root: Path, faults: Faults, seed: int) -> list[SimDevice]:
    """Assign faults to devices, reproducibly for a given seed."""
    rng = random.Random(seed)  # noqa: S311 - simulation, not security
    return [
        SimDevice(
            device_id=i,
            home=str(root / i),
            fail_install=rng.random() < faults.fail_install,
            fail_health=rng.random() < faults.fail_health,
            slow_download=rng.random() < faults.slow_download,
            reboot_mid_update=rng.random() < faults.reboot_mid_update,
            offline=rng.random() < faults.offline,
        )
        for i in ids
    ]


def split(devices: list[SimDevice], workers: int) -> list[list[SimDevice]]:
    """Round-robin slices, so every worker gets a similar mix of faults."""
    return [devices[i::workers] for i in range(workers)]


def describe(devices: list[SimDevice]) -> dict[str, int]:
    """How many devices carry each fault."""
    counts = {"devices": len(devices)}
    for name in ("fail_install", "fail_health", "slow_download", "reboot_mid_update", "offline"):
        counts[name] = sum(getattr(d, name) for d in devices)
    return counts


def save_plan(path: Path, devices: list[SimDevice]) -> None:
    """The plan as JSON, for the record of a rehearsal."""
    path.write_text(json.dumps([asdict(d) for d in devices], indent=1))
