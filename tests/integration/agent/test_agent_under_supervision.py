"""The real agent process as systemd runs it on a device: in a memory cgroup limited to the
unit's MemoryMax (128 MiB), restarted whenever it exits (Restart=always), against the real
broker and S3. Every hostile bundle and a damaged update record must end in an outcome reported
to the backend, with no restart at all and memory well inside the limit.

Needs the cgroup v1 memory controller writable (root, as here and in CI); skipped otherwise.
"""

import io
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernex_protocol.payloads import ErrorCode, ProgressState
from tests.integration.agent.conftest import Device, DeviceFactory
from tests.integration.agent.harness import (
    AgentProcess,
    BackendStandIn,
    BundleStore,
    app_archive,
    deploy,
    running_version,
)

pytestmark = pytest.mark.integration

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
MEMORY_MAX = 128 * 1024 * 1024  # the unit's MemoryMax


class Supervised:
    """Restart=always, RestartSec=0.5, around one agent process, in its own memory cgroup."""

    def __init__(self, agent: AgentProcess, cgroup: Path) -> None:
        self.agent = agent
        self.cgroup = cgroup
        self.restarts = 0
        self._stop = threading.Event()
        self.paused = threading.Event()  # set: an exited agent stays down (an operator's hold)
        agent.wrapper = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]
        self._thread = threading.Thread(target=self._keep, daemon=True)

    def start(self) -> None:
        self.agent.start()
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(0.2):
            assert self.agent.process is not None
            exited = self.agent.process.poll() is not None
            if exited and not self._stop.is_set() and not self.paused.is_set():
                self.restarts += 1
                time.sleep(0.5)
                self.agent.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.agent.terminate()

    @property
    def peak_bytes(self) -> int:
        return int((self.cgroup / "memory.max_usage_in_bytes").read_text())


@pytest.fixture
def supervised(make_device: DeviceFactory) -> Iterator[tuple[Device, Supervised]]:
    if not (MEMORY_ROOT / "cgroup.procs").exists():
        pytest.skip("no writable cgroup v1 memory controller on this machine")
    cgroup = MEMORY_ROOT / f"kernex-agent-{uuid.uuid4().hex[:8]}"
    try:
        cgroup.mkdir()
        (cgroup / "memory.limit_in_bytes").write_text(str(MEMORY_MAX))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    device = make_device()
    running = Supervised(device.agent, cgroup)
    running.start()
    device.agent.wait_log("mqtt.connected")
    yield device, running
    running.stop()
    for _ in range(50):  # the cgroup empties once the process is reaped
        try:
            cgroup.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def header_bomb(version: str) -> bytes:
    """A few hundred KiB of gzip whose GNU long name unpacks to 200 MiB: tarfile would read it
    whole (the agent used to grow past 800 MiB on this)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("VERSION")
        info.size = len(version)
        tar.addfile(info, io.BytesIO(version.encode()))
        bomb = tarfile.TarInfo("x" * (200 * 1024 * 1024))
        bomb.size = 1
        tar.addfile(bomb, io.BytesIO(b"!"))
    return out.getvalue()


HOSTILE = {
    "link chain": lambda v: app_archive(
        v,
        hostile=[
            _member("d", tarfile.DIRTYPE),
            _member("d/up", tarfile.SYMTYPE, ".."),
            _member("d/up/escape.txt"),
        ],
    ),
    "hard link through a link": lambda v: app_archive(
        v,
        hostile=[
            _member("via", tarfile.SYMTYPE, "."),
            _member("via/h", tarfile.LNKTYPE, "VERSION"),
        ],
    ),
    "deep tree": lambda v: app_archive(v, hostile=[_member("d/" * 3000 + "x")]),
    "header bomb": header_bomb,
}


@pytest.mark.reliability(
    "Hostile devices",
    "hostile bundles: hard links, header and decompression bombs",
    "refused and reported; the agent never restarts",
)
def test_hostile_bundles_end_reported_without_a_restart(
    supervised: tuple[Device, Supervised], bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device, running = supervised
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    outside = device.install_root.parent
    before = sorted(p.name for p in outside.iterdir())
    for number, (name, build) in enumerate(HOSTILE.items(), start=1):
        version = f"1.0.{number}"
        release = bundles.put(build(version), version)
        deployment = backend_side.notify(device.device_id, release)
        progress = backend_side.progress_until_final(device.device_id, deployment, timeout=60)
        final = progress[-1]
        assert final.state in (ProgressState.ROLLED_BACK, ProgressState.FAILED), (name, progress)
        assert final.error is not None and final.error.code == ErrorCode.INSTALL_FAILED, name
        assert running_version(device.install_root) == "1.0.0", name
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written beside it
    assert running.restarts == 0
    assert running.peak_bytes < MEMORY_MAX * 0.75, f"peak {running.peak_bytes / 2**20:.0f} MiB"
    # And it still installs a good release afterwards.
    assert deploy(backend_side, bundles, device.device_id, "2.0.0")[-1].state == "committed"


@pytest.mark.parametrize(
    "content",
    [b"", b'{"schema": 1, "state": "instal', b"\x00" * 64, b'{"schema": 1, "state": "teleport"}'],
    ids=["empty", "half-written", "zeros", "unknown-state"],
)
@pytest.mark.reliability(
    "Faults",
    "the agent's state file truncated or half-written",
    "the agent starts and reports",
)
def test_a_damaged_update_record_is_survived(
    supervised: tuple[Device, Supervised],
    bundles: BundleStore,
    backend_side: BackendStandIn,
    content: bytes,
) -> None:
    device, running = supervised
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    running.paused.set()
    device.agent.terminate()
    (device.agent.state_dir / "update.json").write_bytes(content)  # as a power cut might leave
    device.agent.start()
    running.paused.clear()
    device.agent.wait_log("update.record_damaged")
    assert deploy(backend_side, bundles, device.device_id, "2.0.0")[-1].state == "committed"
    assert running.restarts == 0  # it started once on the damaged record, and stayed up
    assert list(device.agent.state_dir.glob("update.json.damaged-*"))


@pytest.mark.reliability(
    "Faults",
    "the state file damaged mid-install",
    "the install undone, the old version running, reported",
)
def test_a_damaged_record_mid_install_is_undone_and_reported(
    supervised: tuple[Device, Supervised], bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device, running = supervised
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    # A power cut right after entering HEALTH_CHECK of 2.0.0: the new version is selected but
    # not committed. Held down, its record loses the notice: nothing says how it got there.
    running.paused.set()
    device.agent.terminate()
    device.agent.start(KERNEX_FAULT_CRASH_IN="health_check")
    deployment = backend_side.notify(device.device_id, bundles.put(app_archive("2.0.0"), "2.0.0"))
    assert device.agent.wait_exit(60) == 137
    record = device.agent.state_dir / "update.json"
    assert b'"health_check"' in record.read_bytes()
    assert running_version(device.install_root) == "2.0.0"
    record.write_text(record.read_text().replace('"notice"', '"lost"'))
    running.paused.clear()  # the supervisor starts it again
    progress = backend_side.progress_until_final(device.device_id, deployment, timeout=30)
    final = progress[-1]
    assert final.state == ProgressState.FAILED, progress
    assert final.error is not None and final.error.code == ErrorCode.STATE_DAMAGED
    assert running_version(device.install_root) == "1.0.0"  # the uncommitted install undone
    assert deploy(backend_side, bundles, device.device_id, "3.0.0")[-1].state == "committed"
