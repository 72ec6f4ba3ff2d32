"""What the agent does for rollouts: it waits a notice's start delay (jitter) and lets a newer
notice or a withdrawal replace it, and it runs a retried deployment again as a new attempt."""

import time

import pytest

from kernex_protocol.payloads import ProgressState
from tests.integration.agent.conftest import Device, DeviceFactory
from tests.integration.agent.harness import (
    BackendStandIn,
    BundleStore,
    app_archive,
    running_version,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def device(make_device: DeviceFactory, backend_side: BackendStandIn) -> Device:
    device = make_device()
    device.agent.start()
    device.agent.wait_log("mqtt.connected")
    return device


def test_start_delay_is_waited_once_and_a_withdrawal_during_it_wins(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    release = bundles.put(app_archive("1.0.0"), "1.0.0")
    sent = time.monotonic()
    deployment = backend_side.notify(device.device_id, release, start_delay_s=4)
    # Re-published meanwhile (as the reconciler does, with a fresh signature and URL): the
    # delay runs from the first copy, it does not start again.
    time.sleep(2)
    backend_side.notify(device.device_id, release, deployment_id=deployment, start_delay_s=4)
    progress = backend_side.progress_until_final(device.device_id, deployment)
    started = time.monotonic() - sent
    assert progress[0].state == ProgressState.DOWNLOADING and progress[-1].state == "committed"
    assert 4 <= started < 6 + 2, started  # the delay (not 2 + 4 s), plus the update itself
    assert {p.attempt for p in progress} == {1}

    # Withdrawn during its delay: the device never starts it, and takes the next notice.
    later = bundles.put(app_archive("1.1.0"), "1.1.0")
    withdrawn = backend_side.notify(device.device_id, later, start_delay_s=30)
    device.agent.wait_log("update.start_delay", deployment_id=withdrawn)
    backend_side.clear_notice(device.device_id)
    replacement = backend_side.notify(device.device_id, later)
    final = backend_side.progress_until_final(device.device_id, replacement)
    assert final[-1].state == ProgressState.COMMITTED
    assert all(p.deployment_id != withdrawn for _, p in backend_side.drain_progress())
    assert running_version(device.install_root) == "1.1.0"


def test_a_retried_deployment_runs_again_as_a_new_attempt(
    device: Device, bundles: BundleStore, backend_side: BackendStandIn
) -> None:
    release = bundles.put(app_archive("2.0.0"), "2.0.0")
    other = bundles.put(app_archive("9.9.9"), "9.9.9")
    # Attempt 1 is sent another object's URL: the download does not verify.
    deployment = backend_side.notify(
        device.device_id, release, url=bundles.url(other), deployment_id="dep-retried"
    )
    first = backend_side.progress_until_final(device.device_id, deployment)
    assert first[-1].state == ProgressState.FAILED and first[-1].attempt == 1
    # The same attempt again (a retained copy): the outcome is only repeated.
    backend_side.notify(device.device_id, release, url=bundles.url(other), deployment_id=deployment)
    repeated = backend_side.progress_until_final(device.device_id, deployment)
    assert [p.state for p in repeated] == [ProgressState.FAILED]
    # Attempt 2, with the right URL: the device tries again and succeeds.
    backend_side.notify(device.device_id, release, deployment_id=deployment, attempt=2)
    second = backend_side.progress_until_final(device.device_id, deployment)
    assert second[0].state == ProgressState.DOWNLOADING and second[-1].state == "committed"
    assert {p.attempt for p in second} == {2}
    assert running_version(device.install_root) == "2.0.0"
