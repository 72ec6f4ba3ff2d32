"""The agent applying updates end to end: real broker (mTLS), real S3, real agent process."""

import itertools

from kernex_protocol.payloads import ErrorCode, ProgressState
from tests.integration.agent.conftest import DeviceFactory
from tests.integration.agent.harness import (
    BackendStandIn,
    BundleStore,
    app_archive,
    running_version,
)

pytestmark = __import__("pytest").mark.integration


def states(progress: list) -> list[str]:  # type: ignore[type-arg]
    return [p.state.value for p in progress]


def test_happy_path_installs_and_commits_then_upgrades(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    device.agent.wait_log("mqtt.connected")

    first = bundles.put(app_archive("1.0.0"), "1.0.0")
    deployment = backend_side.notify(device.device_id, first)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.COMMITTED, progress[-1]
    assert running_version(device.install_root) == "1.0.0"
    # Every state was reported, in order, with download percentages along the way.
    reported = [s for s in states(progress) if s != "downloading"]
    assert reported == ["verifying", "installing", "health_check", "committing", "committed"]
    assert progress[0].state == ProgressState.DOWNLOADING
    assert any(p.percent == 100 for p in progress if p.state == ProgressState.DOWNLOADING), [
        (p.state.value, p.percent) for p in progress
    ]
    assert [p.seq for p in progress] == sorted({p.seq for p in progress})

    second = bundles.put(app_archive("1.1.0"), "1.1.0")
    deployment = backend_side.notify(device.device_id, second)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.COMMITTED
    assert running_version(device.install_root) == "1.1.0"
    # The previous version is kept (keep_versions = 2); nothing is left in downloads.
    versions = sorted(p.name for p in (device.install_root / "versions").iterdir())
    assert versions == ["1.0.0", "1.1.0"]
    assert list((device.agent.state_dir / "downloads").iterdir()) == []
    assert device.agent.terminate() == 0


def test_download_percentages_are_steps_of_ten_at_most_every_two_seconds(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    # 4 MiB at 1 MiB/s: about four seconds of downloading.
    device = make_device(update__download_rate_limit_bps=str(1024 * 1024))
    device.agent.start()
    release = bundles.put(app_archive("4.0.0", payload_bytes=4 * 1024 * 1024), "4.0.0")
    deployment = backend_side.notify(device.device_id, release)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.COMMITTED
    percents = [p.percent for p in progress if p.state == ProgressState.DOWNLOADING and p.percent]
    assert percents[-1] == 100, percents
    between = percents[:-1]
    # Movement is shown, but not one report per 10 % (nine of them): about one per 2 s.
    assert 1 <= len(between) <= 3, percents
    assert all(b - a >= 10 for a, b in itertools.pairwise(between)), percents


def test_corrupted_byte_fails_before_unpacking(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    good = app_archive("2.0.0")
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0x01
    release = bundles.put(bytes(corrupted), "2.0.0", signed_content=good)
    deployment = backend_side.notify(device.device_id, release)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.FAILED
    assert progress[-1].error is not None
    assert progress[-1].error.code == ErrorCode.DIGEST_MISMATCH
    assert "installing" not in states(progress)
    # Nothing was unpacked, nothing runs, and the bad download is gone.
    assert not (device.install_root / "versions").exists()
    assert running_version(device.install_root) is None
    assert list((device.agent.state_dir / "downloads").iterdir()) == []
