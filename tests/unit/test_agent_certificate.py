"""The agent reads its certificate's serial without cryptography: it must agree with
cryptography on real certificates, and refuse what is not one."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kernex_agent.certificate import serial_number
from tests.unit.agent.test_idle_imports import loaded_modules


def certificate(serial: int, *, rsa_key: bool = False) -> bytes:
    key = (
        rsa.generate_private_key(65537, 2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, 2**64 + 5, 2**159 - 1])
def test_the_serial_agrees_with_cryptography(serial: int) -> None:
    pem = certificate(serial)
    assert serial_number(pem) == x509.load_pem_x509_certificate(pem).serial_number == serial


def test_a_long_rsa_certificate_and_a_chain_read_the_first() -> None:
    first, second = certificate(41, rsa_key=True), certificate(42)
    assert serial_number(first + second) == 41


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",  # an empty SEQUENCE
        b"-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",  # truncated
        b"-----BEGIN CERTIFICATE-----\nAgEB\n-----END CERTIFICATE-----\n",  # an INTEGER alone
    ],
)
def test_what_is_not_a_certificate_is_refused(pem: bytes) -> None:
    with pytest.raises(ValueError):
        serial_number(pem)


def test_reading_the_serial_loads_no_deferred_module() -> None:
    # Every connection reads it (the presence message carries it): it must not load base64,
    # which the agent defers (lazy_modules).
    pem = certificate(4242)
    loaded = loaded_modules(
        f"from kernex_agent.certificate import serial_number\nassert serial_number({pem!r}) == 4242"
    )
    assert loaded["base64"] == "_StandIn"
