"""A full disk on the device, for real: the agent's state directory or its install root on a
small tmpfs of its own that fills up. The download or install fails with `disk_full`, nothing
half-written is left, the running version is untouched, and the agent carries on."""

from typing import Any

import pytest

from kernex_protocol.payloads import ErrorCode, ProgressState
from tests.conftest import Mount, fill
from tests.integration.agent.conftest import Device, DeviceFactory
from tests.integration.agent.harness import (
    BackendStandIn,
    BundleStore,
    app_archive,
    partial_download,
    running_version,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def final_failure(side: BackendStandIn, device_id: str, deployment: str) -> Any:
    progress = side.progress_until_final(device_id, deployment, timeout=60)
    final = progress[-1]
    assert final.state in (ProgressState.FAILED, ProgressState.ROLLED_BACK), final
    assert final.error is not None and final.error.code == ErrorCode.DISK_FULL, final.error
    return final


def next_release_installs(device: Device, bundles: BundleStore, side: BackendStandIn) -> None:
    """A small next release commits: the failure left nothing in the way."""
    fixed = bundles.put(app_archive("1.0.1", payload_bytes=MIB), "1.0.1")
    after = side.notify(device.device_id, fixed)
    assert side.progress_until_final(device.device_id, after)[-1].state == (ProgressState.COMMITTED)
    assert running_version(device.install_root) == "1.0.1"


@pytest.mark.reliability(
    "Faults",
    "the device's disk fills up during a download",
    "the update fails as disk_full, the partial download is dropped, the running version"
    " untouched, the agent carries on",
)
def test_a_disk_that_fills_during_the_download(
    small_disk: Mount,
    make_device: DeviceFactory,
    bundles: BundleStore,
    backend_side: BackendStandIn,
    figures: dict[str, Any],
) -> None:
    device = make_device(update__download_rate_limit_bps=str(2 * MIB))
    small_disk(device.agent.state_dir, 16 * MIB)
    device.agent.start()
    release = bundles.put(app_archive("1.0.0", payload_bytes=8 * MIB), "1.0.0")
    deployment = backend_side.notify(device.device_id, release)
    partial = partial_download(device.agent.state_dir, deployment, beyond=MIB)
    filler = fill(device.agent.state_dir)  # something else on the device takes the rest
    final = final_failure(backend_side, device.device_id, deployment)
    assert not partial.exists(), "the partial download was left behind"
    assert running_version(device.install_root) is None
    assert device.agent.process is not None and device.agent.process.poll() is None
    # Space again: the next release installs, so nothing the failure left behind is in the way.
    filler.unlink()
    next_release_installs(device, bundles, backend_side)
    figures["reported"] = f"{final.state.value}: {final.error.code.value}"


@pytest.mark.reliability(
    "Faults",
    "the device's disk fills up during the install",
    "the update fails as disk_full, no half-unpacked version is left, the running version"
    " untouched and still healthy, the agent carries on",
)
def test_a_disk_that_fills_during_the_install(
    small_disk: Mount,
    make_device: DeviceFactory,
    bundles: BundleStore,
    backend_side: BackendStandIn,
    figures: dict[str, Any],
) -> None:
    device = make_device()
    small_disk(device.install_root, 10 * MIB)
    device.agent.start()
    first = backend_side.notify(
        device.device_id, bundles.put(app_archive("1.0.0", payload_bytes=2 * MIB), "1.0.0")
    )
    assert backend_side.progress_until_final(device.device_id, first)[-1].state == (
        ProgressState.COMMITTED
    )
    too_big = bundles.put(app_archive("2.0.0", payload_bytes=9 * MIB), "2.0.0")
    deployment = backend_side.notify(device.device_id, too_big)
    final = final_failure(backend_side, device.device_id, deployment)
    assert running_version(device.install_root) == "1.0.0"
    leftovers = sorted(p.name for p in (device.install_root / "versions").iterdir())
    assert leftovers == ["1.0.0"], leftovers
    assert device.agent.process is not None and device.agent.process.poll() is None
    next_release_installs(device, bundles, backend_side)
    figures["reported"] = f"{final.state.value}: {final.error.code.value}"


@pytest.mark.reliability(
    "Faults",
    "the agent's state disk completely full: no update state can be saved",
    "the update fails as disk_full and is reported; the agent keeps running, restarts and"
    " reconnects on the full disk; with room again the next release installs",
)
def test_a_state_disk_too_full_to_save_a_state(
    small_disk: Mount,
    make_device: DeviceFactory,
    bundles: BundleStore,
    backend_side: BackendStandIn,
    figures: dict[str, Any],
) -> None:
    device = make_device()
    small_disk(device.agent.state_dir, 2 * MIB)
    device.agent.start()
    device.agent.wait_log("mqtt.connected")
    filler = fill(device.agent.state_dir)
    release = bundles.put(app_archive("1.0.0", payload_bytes=MIB), "1.0.0")
    deployment = backend_side.notify(device.device_id, release)
    final = final_failure(backend_side, device.device_id, deployment)
    assert final.state == ProgressState.FAILED
    assert final.error is not None and "cannot be saved" in final.error.detail
    device.agent.wait_log("update.state_unsaved", state="downloading")
    assert running_version(device.install_root) is None
    assert device.agent.process is not None and device.agent.process.poll() is None
    # Nothing half-written holds on to space; the saved state is idle (no file at all).
    names = sorted(p.name for p in device.agent.state_dir.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert "update.json" not in names, names

    # A restart on the full disk: the agent starts, connects with a new session and answers
    # the retained notice again (unremembered, it is tried again and fails the same way).
    sessions_before = {p.session for d, p in backend_side.presence if d == device.device_id}
    assert device.agent.terminate() == 0
    device.agent.start()
    connected = device.agent.wait_log("mqtt.connected")
    assert connected["session"] > max(sessions_before)
    again = final_failure(backend_side, device.device_id, deployment)
    assert again.seq > final.seq  # numbered past the last run's, though nothing was saved since

    filler.unlink()
    next_release_installs(device, bundles, backend_side)
    figures["reported"] = f"{final.state.value}: {final.error.code.value}"
