"""What the agent refuses before downloading anything, and what it does with repeats."""

import datetime as dt
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_protocol.manifest import SignedRelease
from kernex_protocol.payloads import ErrorCode, Notice, ProgressState
from tests.integration.agent.conftest import Device, DeviceFactory
from tests.integration.agent.harness import (
    BackendStandIn,
    BundleStore,
    app_archive,
    deploy,
    running_version,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def device(make_device: DeviceFactory, backend_side: BackendStandIn) -> Device:
    device = make_device()
    device.agent.start()
    device.agent.wait_log("mqtt.connected")
    return device


def rejected(backend: BackendStandIn, device: Device, deployment: str) -> ErrorCode:
    progress = backend.progress_until_final(device.device_id, deployment)
    assert [p.state for p in progress] == [ProgressState.REJECTED], progress
    assert progress[0].error is not None
    return progress[0].error.code


@pytest.mark.reliability(
    "Hostile devices",
    "a notice signed with an unknown key, or with a bad signature",
    "rejected before any download",
)
def test_unknown_key_and_bad_signature_are_rejected_without_download(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    archive = app_archive("1.0.0")
    stranger = bundles.put(archive, "1.0.0", key=Ed25519PrivateKey.generate())
    assert rejected(backend_side, device, backend_side.notify(device.device_id, stranger)) == (
        ErrorCode.UNKNOWN_KEY
    )
    # A manifest altered after signing (here: another digest), signature kept.
    genuine = bundles.put(archive, "1.0.0")
    manifest = genuine.signed.manifest
    forged_manifest = type(manifest)(
        manifest.name,
        manifest.version,
        manifest.device_type,
        "0" * 64,
        manifest.size,
        manifest.created_at,
    )
    genuine.signed = SignedRelease(forged_manifest, genuine.signed.signature, genuine.signed.key_id)
    assert rejected(backend_side, device, backend_side.notify(device.device_id, genuine)) == (
        ErrorCode.SIGNATURE_INVALID
    )
    assert not (device.agent.state_dir / "downloads").exists()
    assert running_version(device.install_root) is None


@pytest.mark.reliability(
    "Hostile devices",
    "a replayed (expired) notice, or one for another device type",
    "rejected",
)
def test_wrong_device_type_and_expired_notice_are_rejected(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    other_type = bundles.put(app_archive("1.0.0"), "1.0.0", device_type="another-board")
    code = rejected(backend_side, device, backend_side.notify(device.device_id, other_type))
    assert code == ErrorCode.WRONG_DEVICE_TYPE
    release = bundles.put(app_archive("1.0.0"), "1.0.0")
    expired = backend_side.notify(device.device_id, release, expires_in_s=-60)
    assert rejected(backend_side, device, expired) == ErrorCode.NOTICE_EXPIRED


@pytest.mark.reliability(
    "Hostile devices",
    "a notice addressed to another device",
    "rejected",
)
def test_notice_for_another_device_is_rejected(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    release = bundles.put(app_archive("1.0.0"), "1.0.0")
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    notice = Notice("dep-misrouted", "someone-else", release.signed, issued_at=now)
    backend_side.publish_notice(
        device.device_id, notice.signed_with(backend_side.notice_key).to_payload()
    )
    assert rejected(backend_side, device, "dep-misrouted") == ErrorCode.WRONG_DEVICE


@pytest.mark.reliability(
    "Hostile devices",
    "a downgrade without a signed rollback approval",
    "refused",
)
def test_downgrade_needs_a_signed_rollback_approval(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    assert deploy(backend_side, bundles, device.device_id, "1.1.0")[-1].state == "committed"
    older = bundles.put(app_archive("1.0.0"), "1.0.0")
    code = rejected(backend_side, device, backend_side.notify(device.device_id, older))
    assert code == ErrorCode.DOWNGRADE_REFUSED
    assert running_version(device.install_root) == "1.1.0"

    # An approval for another artefact does not do.
    decoy = bundles.put(app_archive("1.0.0") + b"\0", "1.0.0")
    decoy_approval = bundles.rollback(decoy, from_version="1.1.0")
    wrong = backend_side.notify(device.device_id, older, rollback=decoy_approval)
    assert rejected(backend_side, device, wrong) == ErrorCode.DOWNGRADE_REFUSED
    # Nor one from another installed version, nor an expired one.
    for approval in (
        bundles.rollback(older, from_version="1.0.5"),
        bundles.rollback(older, from_version="1.1.0", valid_for_s=1),
    ):
        refused = backend_side.notify(device.device_id, older, rollback=approval)
        assert rejected(backend_side, device, refused) == ErrorCode.DOWNGRADE_REFUSED

    approval = bundles.rollback(older, from_version="1.1.0")
    approved = backend_side.notify(device.device_id, older, rollback=approval)
    progress = backend_side.progress_until_final(device.device_id, approved)
    assert progress[-1].state == ProgressState.COMMITTED
    assert running_version(device.install_root) == "1.0.0"


def test_repeated_notice_is_idempotent_and_installed_version_is_reported(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    release = bundles.put(app_archive("1.2.0"), "1.2.0")
    deployment = backend_side.notify(device.device_id, release, deployment_id="dep-repeat")
    first = backend_side.progress_until_final(device.device_id, deployment)
    assert first[-1].state == ProgressState.COMMITTED
    installed_at = (device.install_root / "versions" / "1.2.0").stat().st_mtime_ns

    # The same deployment again (a retained notice after a reconnect): the outcome is said
    # again, nothing is downloaded or installed again.
    backend_side.notify(device.device_id, release, deployment_id="dep-repeat")
    again = backend_side.progress_until_final(device.device_id, deployment)
    assert [p.state for p in again] == [ProgressState.COMMITTED]
    assert again[0].seq == first[-1].seq
    assert (device.install_root / "versions" / "1.2.0").stat().st_mtime_ns == installed_at

    # Another deployment of the version that already runs.
    other = backend_side.notify(device.device_id, release)
    progress = backend_side.progress_until_final(device.device_id, other)
    assert [p.state for p in progress] == [ProgressState.ALREADY_INSTALLED]


@pytest.mark.reliability(
    "Bad input",
    "a malformed notice",
    "dropped; the agent carries on",
)
def test_malformed_notice_is_dropped_and_the_agent_carries_on(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    junk = (b"not json", b"[]", b'{"v": 99}', b'{"v": 1, "deployment_id": "../x"}')
    for count, payload in enumerate(junk, start=1):
        backend_side.publish_notice(device.device_id, payload)
        device.agent.wait_log("mqtt.malformed_payload", count=count)
    assert deploy(backend_side, bundles, device.device_id, "1.0.0")[-1].state == "committed"


def test_cleared_notice_cancels_a_download(
    make_device: DeviceFactory, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    # Slow enough to be caught mid-download: 4 MiB at 1 MiB/s.
    device = make_device(update__download_rate_limit_bps=str(1024 * 1024))
    device.agent.start()
    release = bundles.put(app_archive("3.0.0", payload_bytes=4 * 1024 * 1024), "3.0.0")
    deployment = backend_side.notify(device.device_id, release)
    partial = device.agent.state_dir / "downloads" / f"{deployment}.bundle"
    deadline = time.monotonic() + 10
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    backend_side.clear_notice(device.device_id)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    assert progress[-1].state == ProgressState.CANCELED
    assert not partial.exists()
    assert running_version(device.install_root) is None
