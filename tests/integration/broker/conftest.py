"""A real Mosquitto, rendered from broker-config/, with a real CA, once per test session."""

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kernex_devstack.broker import SERVICE_IDENTITY, EmbeddedBroker
from kernex_provision.authority import CertificateAuthority, pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key
from tests.conftest import service_state_dir
from tests.integration.broker.mqtt_client import Identity, Probe, connect

pytestmark = pytest.mark.integration

IdentityFactory = Callable[..., Identity]
Connector = Callable[..., Probe]


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    for state_dir in service_state_dir("broker"):
        server = EmbeddedBroker(state_dir / "broker")
        server.start()
        yield server
        server.stop()


@pytest.fixture
def issue(broker: EmbeddedBroker, tmp_path: Path) -> IdentityFactory:
    """Issue a device identity (or one from another CA, or an expired one) into files."""

    def make(
        name: str,
        *,
        authority: CertificateAuthority | None = None,
        issued_at: dt.datetime | None = None,
        days: int = 30,
    ) -> Identity:
        ca = authority or broker.authority
        key = new_key()
        cert = ca.issue(
            key.public_key(),
            kind=CertificateKind.DEVICE,
            common_name=name,
            days=days,
            issued_at=issued_at,
        )
        folder = tmp_path / f"{name}-{cert.serial_number:x}"
        folder.mkdir()
        write_private_key(folder / "key.pem", key)
        write_public(folder / "cert.pem", pem(cert))
        return Identity(name, broker.layout.ca_chain, folder / "cert.pem", folder / "key.pem")

    return make


@pytest.fixture
def service_identity(broker: EmbeddedBroker) -> Identity:
    return Identity(
        SERVICE_IDENTITY,
        broker.layout.ca_chain,
        broker.service_dir / "service.crt",
        broker.service_dir / "service.key",
    )


@pytest.fixture
def mqtt_connect(broker: EmbeddedBroker) -> Iterator[Connector]:
    """Connect clients to the broker; all are closed after the test."""
    probes: list[Probe] = []

    def open_probe(identity: Identity, **kwargs: object) -> Probe:
        probe = connect(identity, broker.host, broker.port, **kwargs)  # type: ignore[arg-type]
        probes.append(probe)
        return probe

    yield open_probe
    for probe in probes:
        probe.close()


@pytest.fixture
def backend(service_identity: Identity, mqtt_connect: Connector) -> Probe:
    probe = mqtt_connect(service_identity)
    assert probe.connected.is_set(), probe.error
    return probe
