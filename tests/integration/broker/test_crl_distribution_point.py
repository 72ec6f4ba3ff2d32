"""The CRL at its distribution point (`GET /api/v1/pki/crl`): public, DER, the CA's current
list, naming the point once the CA names one; what a broker that fetches CRLs (EMQX) reads."""

import uuid
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kernex_backend.core.config import Settings
from kernex_devstack.broker import EmbeddedBroker
from kernex_provision.authority import CertificateAuthority
from kernex_provision.certificates import common_name, make_csr, new_key
from tests.conftest import make_settings

URL = "http://kernex-api.kernex.svc:8000/api/v1/pki/crl"


@pytest.fixture
def settings(database_url: str, broker: EmbeddedBroker) -> Settings:
    return make_settings(
        database_url, pki={"ca_dir": broker.ca_dir, "broker_dir": broker.layout.directory}
    )


@pytest.fixture
def authority(broker: EmbeddedBroker) -> Iterator[CertificateAuthority]:
    """The broker's CA, left as found: without a distribution URL."""
    authority = CertificateAuthority(broker.ca_dir)
    yield authority
    authority.set_crl_url(None)


async def provision(client: httpx.AsyncClient, headers: dict[str, str]) -> x509.Certificate:
    name = f"crl-{uuid.uuid4().hex[:8]}"
    csr = make_csr(new_key(), name).public_bytes(serialization.Encoding.PEM).decode()
    response = await client.post(
        f"/api/v1/devices/{name}/certificate",
        json={"csr": csr, "device_type": "gateway"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return x509.load_pem_x509_certificate(response.json()["certificate"].encode())


async def fetch_crl(client: httpx.AsyncClient) -> x509.CertificateRevocationList:
    response = await client.get("/api/v1/pki/crl")  # no API key: brokers fetch it
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pkix-crl"
    assert "max-age=" in response.headers["cache-control"]
    return x509.load_der_x509_crl(response.content)


async def test_the_published_crl_lists_a_device_revoked_through_the_api(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    authority: CertificateAuthority,
) -> None:
    certificate = await provision(client, admin_headers)
    before = await fetch_crl(client)
    assert before.get_revoked_certificate_by_serial_number(certificate.serial_number) is None

    name = common_name(certificate)
    revoked = await client.post(f"/api/v1/devices/{name}/revoke", headers=admin_headers)
    assert revoked.status_code == 200, revoked.text

    after = await fetch_crl(client)
    assert after.is_signature_valid(authority.issuing_certificate.public_key())  # type: ignore[arg-type]
    assert after.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None
    number = x509.CRLNumber
    assert (
        after.extensions.get_extension_for_class(number).value.crl_number
        > before.extensions.get_extension_for_class(number).value.crl_number
    )


async def test_with_a_url_certificates_and_the_crl_name_the_same_point(
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    authority: CertificateAuthority,
) -> None:
    authority.set_crl_url(URL)
    certificate = await provision(client, write_headers)
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in points[0].full_name or []] == [URL]

    published = await fetch_crl(client)
    idp = published.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert [n.value for n in idp.full_name or []] == [URL]
