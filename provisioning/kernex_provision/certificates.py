"""Certificate profiles: what each kind of Kernex certificate contains.

Pure functions over `cryptography` objects; nothing here touches the file system.
"""

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kernex_protocol.ids import validate_device_id

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# Leave a little room for clocks that are slightly behind (devices without RTC batteries).
_BACKDATE = dt.timedelta(minutes=5)
_MIN_RSA_BITS = 2048
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CertificateKind(StrEnum):
    """What a certificate identifies."""

    ROOT_CA = "root-ca"
    ISSUING_CA = "issuing-ca"
    SERVER = "server"  # the broker
    SERVICE = "service"  # the backend's own MQTT client
    DEVICE = "device"
    # A one-use identity of a device, valid for minutes, with which the backend takes over (and
    # so ends) that device's broker session: Mosquitto 2.0 has no other way to disconnect a
    # client. Its key never leaves the backend's memory and a temporary 0600 file.
    TAKEOVER = "takeover"


class CsrRejected(ValueError):
    """A certificate signing request is not acceptable; the message says why."""


@dataclass(frozen=True, slots=True)
class Issuer:
    """A CA that signs: its certificate and private key."""

    certificate: x509.Certificate
    key: PrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 key: small, fast on small CPUs, supported by every TLS stack we meet."""
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _signing_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


def _builder(
    subject: x509.Name,
    public_key: PublicKey,
    issuer_name: x509.Name,
    days: float,
    issued_at: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    now = issued_at or _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage(public_key: PublicKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_root_ca(
    key: PrivateKey, *, common_name: str, organization: str, days: int
) -> x509.Certificate:
    """A self-signed root that may sign issuing CAs only (path length 1)."""
    name = _name(common_name, organization)
    return (
        _builder(name, key.public_key(), name, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .sign(key, _signing_hash(key))
    )


def _authority_key_id(issuer: Issuer) -> x509.AuthorityKeyIdentifier:
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def make_issuing_ca(
    key: PrivateKey, root: Issuer, *, common_name: str, organization: str, days: int
) -> x509.Certificate:
    """An issuing CA under the root that signs leaf certificates only (path length 0)."""
    return (
        _builder(_name(common_name, organization), key.public_key(), root.certificate.subject, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_authority_key_id(root), critical=False)
        .sign(root.key, _signing_hash(root.key))
    )


def make_leaf(
    public_key: PublicKey,
    issuer: Issuer,
    *,
    kind: CertificateKind,
    common_name: str,
    organization: str,
    days: float,
    dns_names: list[str] | None = None,
    ip_addresses: list[str] | None = None,
    issued_at: dt.datetime | None = None,
    crl_url: str | None = None,
) -> x509.Certificate:
    """A server, service or device certificate signed by the issuing CA.

    `issued_at` backdates the validity period (tests use it to make expired certificates).
    `crl_url` names where the CRL is published (a CRL Distribution Point), for brokers that
    fetch revocations from there instead of from a file (EMQX).
    """
    if kind in (CertificateKind.DEVICE, CertificateKind.TAKEOVER):
        validate_device_id(common_name)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if kind is CertificateKind.SERVER
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        _builder(
            _name(common_name, organization),
            public_key,
            issuer.certificate.subject,
            days,
            issued_at,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
    )
    if kind is CertificateKind.SERVER:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names or []]
        names += [x509.IPAddress(ip_address(a)) for a in ip_addresses or []]
        if not names:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if crl_url is not None:
        builder = builder.add_extension(
            x509.CRLDistributionPoints([_distribution_point(crl_url)]), critical=False
        )
    return builder.sign(issuer.key, _signing_hash(issuer.key))


def _distribution_point(url: str) -> x509.DistributionPoint:
    return x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )


def make_csr(key: PrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    """A CSR as a device makes it (used by tests, the simulator and the agent's rotation)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, _signing_hash(key))
    )


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR, or raise CsrRejected."""
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError:
        raise CsrRejected("the CSR is not a valid PEM certificate signing request") from None


def check_csr(csr: x509.CertificateSigningRequest, device_id: str) -> PublicKey:
    """Verify a device's CSR: signature, common name, key strength. Returns its public key.

    Everything else the CSR asks for (extensions, other name parts) is ignored: the profile
    of a device certificate is ours to decide.
    """
    validate_device_id(device_id)
    if not csr.is_signature_valid:
        raise CsrRejected("the CSR signature does not verify: it was not made with its own key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != device_id:
        found = ", ".join(repr(n.value) for n in names) or "none"
        raise CsrRejected(
            f"the CSR common name must be the device ID {device_id!r} (found {found})"
        )
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ACCEPTED_CURVES):
            raise CsrRejected(f"unsupported elliptic curve {key.curve.name}; use P-256 or P-384")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise CsrRejected(f"RSA keys must have at least {_MIN_RSA_BITS} bits")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrRejected("Ed25519 device keys are not supported by every TLS stack; use P-256")
    raise CsrRejected(f"unsupported key type {type(key).__name__}")


def make_crl(
    issuer: Issuer,
    revoked: list[tuple[int, dt.datetime]],
    *,
    number: int,
    valid_days: int,
    held: list[tuple[int, dt.datetime]] | None = None,
    distribution_url: str | None = None,
) -> x509.CertificateRevocationList:
    """A CRL listing (serial, revocation time) pairs, valid for `valid_days`; `held` ones are
    listed with the reason certificateHold (RFC 5280: suspended, and may come off the list).

    With `distribution_url` the CRL names the distribution point it is published at (the
    Issuing Distribution Point, which EMQX requires). Such a CRL covers only certificates that
    name the same point, so the broker's own file CRL is made without it: certificates issued
    before a distribution point was configured carry none."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=valid_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
    )
    if distribution_url is not None:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(distribution_url)],
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            critical=True,  # RFC 5280, 5.2.5
        )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    hold = x509.CRLReason(x509.ReasonFlags.certificate_hold)
    for serial, when in held or []:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(when)
            .add_extension(hold, critical=False)
            .build()
        )
    return builder.sign(issuer.key, _signing_hash(issuer.key))


def common_name(certificate: x509.Certificate) -> str:
    """The certificate's subject common name."""
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


class RenewalRefused(ValueError):
    """A device's proof of holding its current certificate does not hold up."""


def sign_renewal(key: PrivateKey, csr: x509.CertificateSigningRequest) -> bytes:
    """What a device sends as renewal proof: its CURRENT key's signature over the new CSR (DER)."""
    data = csr.public_bytes(serialization.Encoding.DER)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def verify_renewal(
    *,
    issuing_ca: x509.Certificate,
    current_certificate_pem: bytes,
    signature: bytes,
    csr: x509.CertificateSigningRequest,
    device_id: str,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Check that the renewal was signed by the key of a current certificate we issued to
    `device_id`. Revocation is checked by the caller against the issuance index."""
    try:
        current = x509.load_pem_x509_certificate(current_certificate_pem)
    except ValueError:
        raise RenewalRefused("the current certificate is not valid PEM") from None
    try:
        current.verify_directly_issued_by(issuing_ca)
    except (ValueError, TypeError, InvalidSignature):
        raise RenewalRefused("the current certificate was not issued by this CA") from None
    if common_name(current) != device_id:
        raise RenewalRefused("the current certificate belongs to another device")
    moment = now or _now()
    if not current.not_valid_before_utc <= moment < current.not_valid_after_utc:
        raise RenewalRefused("the current certificate has expired; provision the device again")
    data = csr.public_bytes(serialization.Encoding.DER)
    public_key = current.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise RenewalRefused("unsupported key type in the current certificate")
    except InvalidSignature:
        raise RenewalRefused(
            "the renewal proof does not verify with the current certificate"
        ) from None
    return current
