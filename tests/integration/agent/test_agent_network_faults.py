"""The network and the object store failing under a download, through a real TCP proxy between
the agent and the real S3 server: a stalled or trickling link is detected within bounded time,
a store that goes down is waited out, and every download resumes from its offset and ends on
the new version."""

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from minio import Minio

from kernex_backend.deployments.notices import load_notice_key
from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.s3 import EmbeddedS3
from kernex_protocol.payloads import ProgressState
from tests.integration.agent.conftest import Device, DeviceFactory
from tests.integration.agent.harness import (
    BackendStandIn,
    BundleStore,
    app_archive,
    partial_download,
    running_version,
)
from tests.integration.mqtt_client import Identity
from tests.integration.tcp_proxy import Mode, TcpProxy

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
STALL_S = 3.0  # the agent's stall limit in these tests (60 s by default)


@pytest.fixture
def proxy(s3_server: EmbeddedS3) -> Iterator[TcpProxy]:
    host, port = s3_server.endpoint.rsplit(":", 1)
    running = TcpProxy(host, int(port)).start()
    yield running
    running.close()


@pytest.fixture
def behind_proxy(
    proxy: TcpProxy,
    s3_server: EmbeddedS3,
    broker: EmbeddedBroker,
    service_identity: Identity,
    release_key: Any,
) -> Iterator[tuple[BundleStore, BackendStandIn]]:
    """Bundles stored and presigned through the proxy, so every download crosses it."""
    creds = s3_server.credentials()
    client = Minio(
        proxy.endpoint, access_key=creds.access_key, secret_key=creds.secret_key, secure=False
    )
    bucket = f"kernex-proxied-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    store = BundleStore(client, bucket, release_key)
    side = BackendStandIn(
        service_identity, broker.host, broker.port, store, load_notice_key(broker.notice_key_file)
    )
    side.start()
    yield store, side
    side.stop()
    proxy.set("pass")
    for item in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, item.object_name or "")
    client.remove_bucket(bucket)


def downloading(
    make_device: DeviceFactory, store: BundleStore, side: BackendStandIn
) -> tuple[Device, str, int]:
    """A device part-way through a 6 MiB download: (device, deployment, bundle size)."""
    device = make_device(
        update__download_rate_limit_bps=str(2 * MIB),
        update__download_stall_s=str(STALL_S),
        update__download_min_rate_bps=str(64 * 1024),
        update__download_rate_window_s="4",
        update__download_attempts="30",
        update__retry_min_s="0.5",
        update__retry_max_s="1",
    )
    device.agent.start()
    release = store.put(app_archive("1.0.0", payload_bytes=6 * MIB), "1.0.0")
    deployment = side.notify(device.device_id, release)
    partial_download(device.agent.state_dir, deployment, beyond=MIB)
    return device, deployment, release.signed.manifest.size


def resumes_and_ends_on_the_new_version(
    device: Device, side: BackendStandIn, deployment: str, size: int
) -> dict[str, Any]:
    """The download resumed from where it was (not from 0), and the update committed."""
    resumed = device.agent.wait_log("download.resumed", timeout=30, deployment_id=deployment)
    assert MIB < resumed["offset"] < size
    progress = side.progress_until_final(device.device_id, deployment, timeout=60)
    assert progress[-1].state == ProgressState.COMMITTED, progress[-1]
    assert running_version(device.install_root) == "1.0.0"
    return resumed


@pytest.mark.reliability(
    "Faults",
    "the network stalls, or slows to a trickle, during a download",
    "the stall detected within bounded time; the download resumes from its offset; the new"
    " version installed",
)
@pytest.mark.parametrize("fault", ["stall", "trickle"])
def test_a_stalled_or_trickling_link_is_cut_and_the_download_resumes(
    fault: Mode,
    make_device: DeviceFactory,
    behind_proxy: tuple[BundleStore, BackendStandIn],
    proxy: TcpProxy,
    figures: dict[str, Any],
) -> None:
    store, side = behind_proxy
    device, deployment, size = downloading(make_device, store, side)
    proxy.set(fault)
    started = time.monotonic()
    cut = device.agent.wait_log("download.interrupted", timeout=30, deployment_id=deployment)
    detected_s = time.monotonic() - started
    # The stall limit, or the rate window, plus the watchdog's tick: never the socket's silence.
    assert detected_s < 4 + 2, f"took {detected_s:.1f} s to notice"
    time.sleep(1)
    proxy.set("pass")
    resumed = resumes_and_ends_on_the_new_version(device, side, deployment, size)
    figures[f"{fault} detected after (s)"] = round(detected_s, 1)
    figures[f"{fault}: resumed at (MiB)"] = round(resumed["offset"] / MIB, 1)
    assert cut["reason"]


@pytest.mark.reliability(
    "Faults",
    "the object store down during a download",
    "the agent retries until it is back, resumes from its offset, installs the new version",
)
def test_an_object_store_outage_is_waited_out(
    make_device: DeviceFactory,
    behind_proxy: tuple[BundleStore, BackendStandIn],
    proxy: TcpProxy,
    figures: dict[str, Any],
) -> None:
    store, side = behind_proxy
    device, deployment, size = downloading(make_device, store, side)
    proxy.set("down")
    time.sleep(6)  # several attempts meet a store that is not there
    failed = [
        entry
        for entry in device.agent.log_lines()
        if entry.get("event") == "download.interrupted" and entry.get("deployment_id") == deployment
    ]
    assert len(failed) >= 2, failed
    proxy.set("pass")
    resumed = resumes_and_ends_on_the_new_version(device, side, deployment, size)
    figures["store down for (s)"] = 6
    figures["resumed at (MiB)"] = round(resumed["offset"] / MIB, 1)
    figures["attempts that met it down"] = len(failed)
