"""Power cuts, expired URLs, broken health checks and hostile archives: the device always ends
on a complete version, and every deployment ends in a final state."""

import tarfile
import time
from pathlib import Path

import pytest

from kernex_agent.update.machine import State
from kernex_protocol.payloads import ErrorCode, ProgressState
from tests.integration.agent.conftest import DeviceFactory
from tests.integration.agent.harness import (
    BackendStandIn,
    BundleStore,
    app_archive,
    deploy,
    partial_download,
    running_version,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def test_expired_url_is_replaced_over_url_request(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    release = bundles.put(app_archive("1.0.0"), "1.0.0")
    stale = bundles.url(release, expires_s=1)
    time.sleep(2.5)  # S3 now answers 403 to that URL
    deployment = backend_side.notify(device.device_id, release, url=stale)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.COMMITTED
    assert [r.deployment_id for r in backend_side.url_requests] == [deployment]
    device.agent.wait_log("download.url_refused")
    assert running_version(device.install_root) == "1.0.0"


def test_notice_without_url_asks_for_one(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    progress = deploy(backend_side, bundles, device.device_id, "1.0.0", with_url=False)
    assert progress[-1].state == ProgressState.COMMITTED
    assert len(backend_side.url_requests) == 1


@pytest.mark.reliability(
    "Faults",
    "the agent killed mid-download",
    "resumes from its offset and completes",
)
def test_killed_mid_download_resumes_from_its_offset(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device(update__download_rate_limit_bps=str(2 * MIB))
    device.agent.start()
    release = bundles.put(app_archive("1.0.0", payload_bytes=6 * MIB), "1.0.0")
    deployment = backend_side.notify(device.device_id, release)
    partial = partial_download(device.agent.state_dir, deployment, beyond=MIB)
    device.agent.kill()  # SIGKILL: no chance to tidy up
    offset = partial.stat().st_size
    assert MIB < offset < release.signed.manifest.size

    device.agent.start()
    resumed = device.agent.wait_log("download.resumed", deployment_id=deployment)
    assert resumed["offset"] == offset
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.COMMITTED
    assert running_version(device.install_root) == "1.0.0"


CRASH_POINTS = [
    State.DOWNLOADING,
    State.VERIFYING,
    State.INSTALLING,
    State.HEALTH_CHECK,
    State.COMMITTING,
    State.COMMITTED,
]


@pytest.mark.reliability(
    "Faults",
    "a power cut in every update state",
    "a complete version and a terminal execution state",
)
@pytest.mark.parametrize("state", CRASH_POINTS, ids=[s.value for s in CRASH_POINTS])
def test_power_cut_in_every_state_leaves_a_complete_version(
    state: State, make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    device.agent.terminate()

    release = bundles.put(app_archive("2.0.0"), "2.0.0")
    device.agent.start(KERNEX_FAULT_CRASH_IN=state.value)
    deployment = backend_side.notify(device.device_id, release)
    assert device.agent.wait_exit() == 137
    # Whatever the moment, the device runs a complete version: the old one or the new one.
    assert running_version(device.install_root) in ("1.0.0", "2.0.0")

    device.agent.start()
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.COMMITTED, progress[-1]
    assert running_version(device.install_root) == "2.0.0"
    device.agent.wait_log("update.resuming", state=state.value)


@pytest.mark.reliability(
    "Faults",
    "a power cut while rolling back",
    "back on the previous version",
)
@pytest.mark.parametrize("state", [State.ROLLING_BACK, State.ROLLED_BACK], ids=str)
def test_power_cut_while_rolling_back_still_returns_to_the_old_version(
    state: State, make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    device.agent.terminate()

    broken = bundles.put(app_archive("2.0.0", healthy=False), "2.0.0")
    device.agent.start(KERNEX_FAULT_CRASH_IN=state.value)
    deployment = backend_side.notify(device.device_id, broken)
    assert device.agent.wait_exit() == 137
    assert running_version(device.install_root) in ("1.0.0", "2.0.0")
    device.agent.start()
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.ROLLED_BACK
    assert running_version(device.install_root) == "1.0.0"


def test_failing_health_check_rolls_back(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    broken = bundles.put(app_archive("1.1.0", healthy=False), "1.1.0")
    deployment = backend_side.notify(device.device_id, broken)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert [p.state.value for p in progress][-3:] == ["health_check", "rolling_back", "rolled_back"]
    assert progress[-1].error is not None
    assert progress[-1].error.code == ErrorCode.HEALTH_CHECK_FAILED
    assert running_version(device.install_root) == "1.0.0"
    assert not (device.install_root / "versions" / "1.1.0").exists()
    assert not (device.install_root / "previous").exists()
    # Its heartbeats now say it is idle again and what went wrong last.
    seen = len(backend_side.heartbeats)
    deadline = time.monotonic() + 10
    while len(backend_side.heartbeats) <= seen + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    latest = [h for d, h in backend_side.heartbeats if d == device.device_id][-1]
    assert latest["update_state"] == "idle"
    assert latest["last_error"] == "health_check_failed"


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


HOSTILE = {
    "dot-dot": [_member("../../escaped-by-dotdot")],
    "absolute": [_member("/tmp/kernex-escaped-absolute")],
    "outward-symlink": [_member("innocent", tarfile.SYMTYPE, "../../../escaped-link-target")],
    "device-file": [_member("dev-null", tarfile.CHRTYPE)],
}


@pytest.mark.reliability(
    "Hostile devices",
    "archive tricks: traversal, absolute paths, links out, device nodes",
    "nothing written outside staging; the running version untouched",
)
@pytest.mark.parametrize("attack", HOSTILE, ids=list(HOSTILE))
def test_hostile_archive_writes_nothing_outside_staging(
    attack: str, make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"
    before = sorted(str(p) for p in device.install_root.parent.rglob("*"))

    archive = app_archive("6.6.6", hostile=HOSTILE[attack])
    release = bundles.put(archive, "6.6.6")
    deployment = backend_side.notify(device.device_id, release)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.ROLLED_BACK
    assert progress[-1].error is not None
    assert progress[-1].error.code == ErrorCode.INSTALL_FAILED
    assert running_version(device.install_root) == "1.0.0"
    # Nothing new anywhere around the device's directories (the tar's targets), and nothing
    # at the absolute path.
    after = sorted(str(p) for p in device.install_root.parent.rglob("*"))
    new = [p for p in set(after) - set(before) if "/state/" not in p and not p.endswith(".log")]
    assert new == []
    assert not (device.install_root / "versions" / "6.6.6").exists()
    assert not any(device.install_root.rglob("*.staging"))
    assert not Path("/tmp/kernex-escaped-absolute").exists()


def test_no_url_from_the_backend_ends_url_unavailable(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    # The backend never answers url/request.
    device = make_device(update__download_attempts="2", update__url_wait_s="1")
    backend_side.answer_urls = False
    device.agent.start()
    release = bundles.put(app_archive("1.0.0"), "1.0.0")
    deployment = backend_side.notify(device.device_id, release, with_url=False)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.FAILED
    assert progress[-1].error is not None
    assert progress[-1].error.code == ErrorCode.URL_UNAVAILABLE
    assert len(backend_side.url_requests) == 2
    assert running_version(device.install_root) is None
