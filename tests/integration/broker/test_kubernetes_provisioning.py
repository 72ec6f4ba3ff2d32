"""deploy/kubernetes/base/provision.sh for real, on a folder standing in for the PKI volume:
the CA, the broker's files, one MQTT identity per bridge pod and the notice key, idempotent;
then Mosquitto run by `kernex-provision broker-run` from what it rendered, with the bridge
identities connected side by side and sharing device traffic, and a revocation cutting a
device off through the files the backend pods rewrite."""

import hashlib
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernex_devstack.ports import free_port, wait_for_port
from kernex_devstack.process import ensure_traversable
from kernex_protocol.topics import Channel, topic_for
from kernex_provision.authority import (
    CertificateAuthority,
    pem,
    write_private_key,
    write_public,
)
from kernex_provision.broker import BrokerLayout, publish_revocations
from kernex_provision.certificates import CertificateKind, new_key
from tests.integration.mqtt_client import Identity, Probe, connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "deploy" / "kubernetes" / "base" / "provision.sh"
BIN = Path(sys.executable).parent
BRIDGES = 3


def provision(pki: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "KERNEX_PKI_DIR": str(pki),
        "KERNEX_BROKER_PORT": str(port),
        "KERNEX_BROKER_BIND": "127.0.0.1",
        "KERNEX_NAMESPACE": "kernex-test",
        "KERNEX_BROKER_HOST": "localhost",
        "KERNEX_BRIDGE_IDENTITIES": str(BRIDGES),
    }
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def provisioned(tmp_path: Path) -> tuple[Path, int]:
    pki, port = tmp_path / "pki", free_port()
    provision(pki, port)
    return pki, port


def as_in_the_pods(pki: Path, tmp_path: Path) -> str:
    """The Mosquitto command, run as the pods run it when this test is root: the volume's files
    belong to the backend's uid 10001 and Mosquitto runs as uid 1883 in group 10001."""
    if os.geteuid() != 0:
        return "/usr/sbin/mosquitto"
    subprocess.run(["chown", "-R", "10001:10001", str(pki)], check=True)
    ensure_traversable(pki)
    wrapper = tmp_path / "mosquitto-as-broker-uid"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec setpriv --reuid=1883 --regid=1883 --groups=10001 --inh-caps=-all "
        '/usr/sbin/mosquitto "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def broker(provisioned: tuple[Path, int], tmp_path: Path) -> Iterator[tuple[Path, int]]:
    pki, port = provisioned
    log = tmp_path / "broker.log"
    with log.open("wb") as sink:
        runner = subprocess.Popen(
            [
                str(BIN / "kernex-provision"),
                "broker-run",
                "--broker-dir",
                str(pki / "broker"),
                "--mosquitto",
                as_in_the_pods(pki, tmp_path),
            ],
            stdout=sink,
            stderr=sink,
        )
    try:
        if not wait_for_port("127.0.0.1", port, timeout=15):
            runner.terminate()
            runner.wait(10)
            pytest.fail(f"the broker did not listen: {log.read_text(errors='replace')}")
        yield provisioned
    finally:
        runner.terminate()
        runner.wait(15)


def bridge_identity(pki: Path, ordinal: int) -> Identity:
    folder = pki / "services" / f"kernex-bridge-{ordinal}"
    return Identity(
        f"kernex-bridge-{ordinal}",
        folder / "ca-chain.pem",
        folder / "service.crt",
        folder / "service.key",
    )


def device_identity(pki: Path, name: str, tmp: Path) -> Identity:
    authority = CertificateAuthority(pki / "ca")
    key = new_key()
    cert = authority.issue(key.public_key(), kind=CertificateKind.DEVICE, common_name=name, days=30)
    folder = tmp / name
    folder.mkdir()
    write_private_key(folder / "key.pem", key)
    write_public(folder / "cert.pem", pem(cert))
    return Identity(name, pki / "broker" / "ca-chain.pem", folder / "cert.pem", folder / "key.pem")


def test_provisions_every_bridge_identity_and_reruns_without_change(
    provisioned: tuple[Path, int],
) -> None:
    pki, port = provisioned
    broker = pki / "broker"
    for ordinal in range(BRIDGES):
        assert (pki / "services" / f"kernex-bridge-{ordinal}" / "service.crt").is_file()
    assert not (pki / "services" / f"kernex-bridge-{BRIDGES}").exists()
    assert (pki / "notice" / "notice.key").is_file()
    conf = (broker / "mosquitto.conf").read_text()
    # Rendered with absolute paths under the volume's mount point, which the broker pod shares.
    assert f"certfile {broker}/server.crt" in conf and f"listener {port} 127.0.0.1" in conf
    acl = (broker / "acl").read_text()
    for ordinal in range(BRIDGES):
        assert f"user kernex-bridge-{ordinal}\n" in acl
    # The broker (another uid, in group 10001) reads its key; the backend rewrites CRL and ACL.
    assert stat.S_IMODE((broker / "server.key").stat().st_mode) == 0o640
    assert stat.S_IMODE((broker / "acl").stat().st_mode) == 0o664

    ca_key = hashlib.sha256((pki / "ca" / "issuing-ca.key").read_bytes()).hexdigest()
    issued = len(CertificateAuthority(pki / "ca").certificates())
    provision(pki, port)
    assert hashlib.sha256((pki / "ca" / "issuing-ca.key").read_bytes()).hexdigest() == ca_key
    assert len(CertificateAuthority(pki / "ca").certificates()) == issued


def test_bridge_pods_connect_side_by_side_and_a_revoked_device_is_cut_off(
    broker: tuple[Path, int], tmp_path: Path
) -> None:
    pki, port = broker
    bridges: list[Probe] = []
    device: Probe | None = None
    try:
        for ordinal in range(BRIDGES):
            probe = connect(bridge_identity(pki, ordinal), "localhost", port)
            assert probe.connected.is_set(), probe.error
            probe.subscribe("$share/kernex/kernex/v1/devices/+/heartbeat")
            bridges.append(probe)
        name = f"k8s-{uuid.uuid4().hex[:8]}"
        device = connect(device_identity(pki, name, tmp_path), "localhost", port)
        assert device.connected.is_set(), device.error
        for n in range(30):
            device.publish(topic_for(name, Channel.HEARTBEAT), f"hb-{n}".encode())
        device.publish(topic_for(name, Channel.HEARTBEAT), b"barrier")
        received = {
            i: [m.payload for m in bridge.drain(wait=0.5 if i == 0 else 0.0)]
            for i, bridge in enumerate(bridges)
        }
        payloads = [p for got in received.values() for p in got]
        assert sorted(payloads) == sorted([f"hb-{n}".encode() for n in range(30)] + [b"barrier"])
        assert sum(1 for got in received.values() if got) >= 2, "one worker took everything"
        assert not any(b.disconnected.is_set() for b in bridges), "identities kicked each other"

        # What POST /devices/{id}/revoke does on a backend pod: CRL and ACL on the volume;
        # broker-run sees them change and reloads Mosquitto.
        authority = CertificateAuthority(pki / "ca")
        authority.revoke(common_name=name)
        publish_revocations(authority, BrokerLayout(pki / "broker"))
        deadline = time.monotonic() + 5
        cut = False
        while not cut and time.monotonic() < deadline:
            marker = f"probe-{time.monotonic()}".encode()
            device.publish(topic_for(name, Channel.HEARTBEAT), marker, qos=0)
            time.sleep(0.3)
            cut = all(m.payload != marker for bridge in bridges for m in bridge.drain())
        assert cut, "the revoked device still reaches the bridge workers after 5 s"
    finally:
        for probe in [*bridges, *([device] if device else [])]:
            probe.close()
