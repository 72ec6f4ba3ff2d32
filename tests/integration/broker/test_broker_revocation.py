"""Revoking a device cuts off its open session within 5 s, without a restart, and nobody else."""

import threading
import time
import uuid

from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.topics import Channel, topic_for
from kernex_provision import broker as broker_files
from tests.conftest import Connector, IdentityFactory
from tests.integration.mqtt_client import Probe

CUT_OFF_LIMIT_S = 5.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def round_trip(
    backend: Probe, revoked: Probe, revoked_name: str, healthy: Probe, healthy_name: str, n: int
) -> tuple[bool, bool]:
    """One probe round: both devices publish; returns (revoked device reached the backend,
    backend reached the revoked device). The healthy device's messages are the barriers."""
    revoked.publish(topic_for(revoked_name, Channel.HEARTBEAT), f"r{n}".encode())
    backend.publish(topic_for(revoked_name, Channel.DEPLOYMENT), f"n{n}".encode())
    healthy.publish(topic_for(healthy_name, Channel.HEARTBEAT), f"h{n}".encode())
    backend.publish(topic_for(healthy_name, Channel.DEPLOYMENT), f"n{n}".encode())
    seen = backend.wait_for(topic_for(healthy_name, Channel.HEARTBEAT), f"h{n}".encode())
    healthy.wait_for(topic_for(healthy_name, Channel.DEPLOYMENT), f"n{n}".encode())
    heard = any(m.payload == f"r{n}".encode() for m in seen)
    time.sleep(0.05)
    reached = any(m.payload == f"n{n}".encode() for m in revoked.drain())
    return heard, reached


def test_open_session_of_a_revoked_device_loses_all_access_within_5_s(
    broker: EmbeddedBroker, issue: IdentityFactory, mqtt_connect: Connector, backend: Probe
) -> None:
    bad_name, good_name = unique("bad"), unique("good")
    bad = mqtt_connect(issue(bad_name))
    good = mqtt_connect(issue(good_name))
    assert bad.connected.is_set() and good.connected.is_set()
    backend.subscribe("kernex/v1/devices/+/heartbeat")
    bad.subscribe(topic_for(bad_name, Channel.DEPLOYMENT))
    good.subscribe(topic_for(good_name, Channel.DEPLOYMENT))
    assert round_trip(backend, bad, bad_name, good, good_name, 0) == (True, True)

    started = time.monotonic()
    broker.authority.revoke(common_name=bad_name, reason="keyCompromise")
    broker_files.publish_revocations(broker.authority, broker.layout)
    assert broker_files.reload_broker(broker.layout)

    cut_after = None
    n = 1
    while time.monotonic() - started < CUT_OFF_LIMIT_S + 2:
        if round_trip(backend, bad, bad_name, good, good_name, n) == (False, False):
            cut_after = time.monotonic() - started
            break
        n += 1
    assert cut_after is not None, "the revoked device kept access"
    assert cut_after < CUT_OFF_LIMIT_S
    print(f"revoked session cut off after {cut_after:.2f}s")

    # It stays cut off, while the healthy device carries on, and nothing was restarted.
    for m in range(n + 1, n + 6):
        assert round_trip(backend, bad, bad_name, good, good_name, m) == (False, False)
    assert broker.running()
    assert not good.disconnected.is_set()


def test_revoking_one_certificate_of_a_rotated_device_keeps_the_device(
    broker: EmbeddedBroker, issue: IdentityFactory, mqtt_connect: Connector
) -> None:
    """Rotation: the old certificate is revoked once the new one is in use; the device stays."""
    name = unique("rotating")
    old = issue(name)
    new = issue(name)
    old_serial = old.cert_file.parent.name.rsplit("-", 1)[1]  # type: ignore[union-attr]
    broker.authority.revoke(serial=old_serial, reason="superseded")
    broker_files.publish_revocations(broker.authority, broker.layout)
    broker.reload()
    assert name not in broker.authority.blocked_identities()
    time.sleep(0.5)
    assert not mqtt_connect(old, timeout=2).connected.is_set()
    assert mqtt_connect(new).connected.is_set()


def test_reload_does_not_drop_other_sessions(
    broker: EmbeddedBroker, issue: IdentityFactory, mqtt_connect: Connector
) -> None:
    probes = [mqtt_connect(issue(unique("steady"))) for _ in range(5)]
    done = threading.Event()
    broker.reload()
    done.wait(1.0)
    assert all(p.connected.is_set() and not p.disconnected.is_set() for p in probes)
