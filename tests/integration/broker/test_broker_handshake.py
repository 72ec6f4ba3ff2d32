"""Only devices with a current certificate from our CA get through the TLS handshake."""

import datetime as dt
import uuid
from pathlib import Path

from kernex_devstack.broker import EmbeddedBroker
from kernex_provision import broker as broker_files
from kernex_provision.authority import CertificateAuthority
from tests.conftest import Connector, IdentityFactory
from tests.integration.mqtt_client import Identity


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_refused(mqtt_connect: Connector, identity: Identity) -> None:
    probe = mqtt_connect(identity, timeout=3)
    assert not probe.connected.is_set(), "the broker accepted a connection it must refuse"
    assert probe.error


def test_a_current_certificate_is_accepted(issue: IdentityFactory, mqtt_connect: Connector) -> None:
    probe = mqtt_connect(issue(unique("ok")))
    assert probe.connected.is_set(), probe.error


def test_no_client_certificate_is_refused(broker: EmbeddedBroker, mqtt_connect: Connector) -> None:
    assert_refused(mqtt_connect, Identity("anonymous", broker.layout.ca_chain, None, None))


def test_certificate_from_another_ca_is_refused(
    issue: IdentityFactory, mqtt_connect: Connector, tmp_path: Path
) -> None:
    rogue = CertificateAuthority.initialise(tmp_path / "rogue-ca", organization="Kernex")
    assert_refused(mqtt_connect, issue(unique("rogue"), authority=rogue))


def test_expired_certificate_is_refused(issue: IdentityFactory, mqtt_connect: Connector) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    assert_refused(mqtt_connect, issue(unique("expired"), issued_at=long_ago, days=1))


def test_revoked_certificate_is_refused_after_reload_without_restart(
    broker: EmbeddedBroker, issue: IdentityFactory, mqtt_connect: Connector
) -> None:
    name = unique("revoked")
    identity = issue(name)
    first = mqtt_connect(identity)
    assert first.connected.is_set(), first.error
    first.close()
    pid_before = broker.layout.pid_file.read_text()

    broker.authority.revoke(common_name=name, reason="keyCompromise")
    broker_files.publish_revocations(broker.authority, broker.layout)
    assert broker_files.reload_broker(broker.layout)

    # The reload is asynchronous: allow it a moment, then every attempt must fail.
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = mqtt_connect(identity, timeout=2)
        if not probe.connected.is_set():
            break
        probe.close()
        time.sleep(0.2)
    assert_refused(mqtt_connect, identity)
    assert broker.layout.pid_file.read_text() == pid_before and broker.running()
    # Other devices still connect.
    other = mqtt_connect(issue(unique("other")))
    assert other.connected.is_set(), other.error
