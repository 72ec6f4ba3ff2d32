"""Device certificates through the API: CSR signing (provisioning and renewal) and revocation.

The issuing CA is online here (its key lives with the backend); the root stays offline. Signing
and revocation touch files and do public-key work, so they run in a worker thread.
"""

import base64
import binascii
import datetime as dt
from dataclasses import dataclass

import anyio.to_thread
from cryptography import x509
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.core.config import PkiSettings
from kernex_backend.core.db import utc_now
from kernex_backend.core.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from kernex_backend.core.messaging import SessionEnder
from kernex_backend.devices import broker_access
from kernex_backend.devices.models import Device, DeviceStatus
from kernex_backend.devices.schemas import CertificateRequest
from kernex_backend.devices.service import DeviceDecommissioned, DeviceNotFound
from kernex_backend.webhooks import outbox
from kernex_backend.webhooks.models import EventType
from kernex_provision import broker as broker_files
from kernex_provision.authority import AuthorityError, CertificateAuthority, pem
from kernex_provision.certificates import (
    CertificateKind,
    CsrRejected,
    RenewalRefused,
    check_csr,
    load_csr,
    verify_renewal,
)


class CertificateNotFound(NotFound):
    """The device has no certificate with that serial."""

    slug = "certificate-not-found"
    title = "Certificate not found"


class NoLiveCertificate(Conflict):
    """There is nothing (left) to revoke."""

    slug = "no-live-certificate"
    title = "No live certificate"


@dataclass(frozen=True, slots=True)
class Pki:
    """The CA and broker files the backend manages, built from settings."""

    authority: CertificateAuthority
    broker: broker_files.BrokerLayout | None
    settings: PkiSettings

    @classmethod
    def from_settings(cls, settings: PkiSettings) -> "Pki | None":
        """None when no CA is configured."""
        if settings.ca_dir is None:
            return None
        passphrase = (
            settings.ca_passphrase.get_secret_value().encode() if settings.ca_passphrase else None
        )
        broker = broker_files.BrokerLayout(settings.broker_dir) if settings.broker_dir else None
        return cls(CertificateAuthority(settings.ca_dir, passphrase=passphrase), broker, settings)


def require(pki: Pki | None) -> Pki:
    """The configured PKI, or a 503 explaining how to configure it."""
    if pki is None:
        raise ServiceUnavailable("no certificate authority is configured (set KERNEX_PKI__CA_DIR)")
    return pki


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """What the certificate endpoint returns."""

    device_id: str
    serial: str
    not_after: str
    certificate: str
    ca_chain: str


def _decode_proof(proof: str) -> bytes:
    try:
        return base64.b64decode(proof, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("proof must be base64") from None


async def issue(
    *,
    session: AsyncSession,
    pki: Pki,
    device_id: str,
    request: CertificateRequest,
    operator: str | None,
) -> IssuedCertificate:
    """Sign a device's CSR. `operator` is the caller's actor string when it authenticated with
    an API key; without one the request must carry a renewal proof from the device itself."""
    try:
        csr = load_csr(request.csr.encode())
        public_key = check_csr(csr, device_id)
    except CsrRejected as exc:
        raise InvalidInput(str(exc)) from None

    actor = operator
    if operator is None:
        if not (request.current_certificate and request.proof):
            raise Unauthorized(
                "send an API key with the write scope, or renew with current_certificate and proof"
            )
        try:
            current = verify_renewal(
                issuing_ca=pki.authority.issuing_certificate,
                current_certificate_pem=request.current_certificate.encode(),
                signature=_decode_proof(request.proof),
                csr=csr,
                device_id=device_id,
            )
        except RenewalRefused as exc:
            raise Unauthorized(f"renewal refused: {exc}") from None
        if not await anyio.to_thread.run_sync(pki.authority.is_live, current.serial_number):
            raise Unauthorized("renewal refused: the current certificate is revoked")
        actor = f"device:{device_id}"
    assert actor is not None

    device = await session.get(Device, device_id, with_for_update=True)
    if device is None:
        if operator is None:
            raise DeviceNotFound(f"no device with ID {device_id!r}")
        if request.device_type is None:
            raise InvalidInput(f"device {device_id!r} is not registered: give its device_type")
        device = Device(id=device_id, device_type=request.device_type, name=request.name)
        session.add(device)
        audit.record(
            session,
            actor=actor,
            action="device.register",
            object_type="device",
            object_id=device_id,
            details={"device_type": request.device_type, "via": "certificate"},
        )
        outbox.add(
            session,
            EventType.DEVICE_REGISTERED,
            device_id,
            device_id=device_id,
            device_type=request.device_type,
        )
    elif device.status == DeviceStatus.DECOMMISSIONED:
        raise DeviceDecommissioned(f"device {device_id!r} is decommissioned")

    days = request.days or pki.settings.device_cert_days

    def sign() -> x509.Certificate:
        return pki.authority.issue(
            public_key, kind=CertificateKind.DEVICE, common_name=device_id, days=days
        )

    # A device whose certificates were all revoked is denied everything by the broker's ACL;
    # a new certificate lets it back in at once, not at the next unrelated reload.
    quarantined = await broker_access.quarantined_ids(session)

    def sign_and_readmit() -> x509.Certificate:
        blocked = pki.broker is not None and device_id in pki.authority.blocked_identities()
        certificate = sign()
        if blocked:
            broker_access.publish(
                pki.authority,
                pki.broker,
                quarantined,
                reload=pki.settings.broker_reload,
                crl_valid_days=pki.settings.crl_valid_days,
            )
        return certificate

    certificate = await anyio.to_thread.run_sync(sign_and_readmit)
    serial = f"{certificate.serial_number:x}"
    device.cert_serial = serial
    device.cert_not_after = certificate.not_valid_after_utc
    device.updated_at = utc_now()
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.certificate_issue",
        object_type="device",
        object_id=device_id,
        details={
            "serial": serial,
            "not_after": certificate.not_valid_after_utc.isoformat(),
            "renewal": operator is None,
        },
    )
    await session.commit()
    return IssuedCertificate(
        device_id=device_id,
        serial=serial,
        not_after=certificate.not_valid_after_utc.isoformat(),
        certificate=pem(certificate).decode(),
        ca_chain=pki.authority.chain_pem.decode(),
    )


@dataclass(frozen=True, slots=True)
class Revocation:
    """What the revoke endpoint returns."""

    device_id: str
    revoked_serials: list[str]
    device_cut_off: bool
    broker_reloaded: bool
    session_ended: bool = False


async def revoke(
    *,
    session: AsyncSession,
    pki: Pki,
    sessions: SessionEnder | None = None,
    device_id: str,
    serial: str | None,
    reason: str,
    actor: str,
) -> Revocation:
    """Revoke one certificate (rotation) or all of a device's (cut it off); refresh the broker."""
    device = await session.get(Device, device_id, with_for_update=True)
    if device is None:
        raise DeviceNotFound(f"no device with ID {device_id!r}")
    if serial is not None:
        wanted = serial.lower().lstrip("0")
        owned = [
            row
            for row in await anyio.to_thread.run_sync(pki.authority.certificates)
            if row.common_name == device_id and row.serial.lstrip("0") == wanted
        ]
        if not owned:
            raise CertificateNotFound(
                f"device {device_id!r} has no certificate with serial {serial}"
            )

    quarantined = await broker_access.quarantined_ids(session)

    def revoke_and_publish() -> tuple[list[str], bool, bool]:
        try:
            rows = pki.authority.revoke(
                common_name=None if serial else device_id,
                serial=serial,
                reason=reason,
                crl_valid_days=pki.settings.crl_valid_days,
            )
        except AuthorityError as exc:
            raise NoLiveCertificate(str(exc)) from None
        cut_off = device_id in pki.authority.blocked_identities()
        reloaded = broker_access.publish(
            pki.authority,
            pki.broker,
            quarantined,
            reload=pki.settings.broker_reload,
            crl_valid_days=pki.settings.crl_valid_days,
        )
        return [row.serial for row in rows], cut_off, reloaded

    serials, cut_off, reloaded = await anyio.to_thread.run_sync(revoke_and_publish)
    # The broker refuses the certificates from its reload on; the open session is ended too,
    # so a revoked device's traffic stops costing the broker anything.
    ended = cut_off and reloaded and sessions is not None
    if ended:
        assert sessions is not None
        ended = await sessions.end_sessions([device_id]) > 0
    if cut_off:
        device.online = False
    device.updated_at = utc_now()
    session.add(device)
    audit.record(
        session,
        actor=actor,
        action="device.certificate_revoke",
        object_type="device",
        object_id=device_id,
        details={
            "serials": serials,
            "reason": reason,
            "cut_off": cut_off,
            "broker_reloaded": reloaded,
            "session_ended": ended,
        },
    )
    outbox.add(
        session,
        EventType.DEVICE_REVOKED,
        device_id,
        device_id=device_id,
        serials=serials,
        reason=reason,
        cut_off=cut_off,
    )
    await session.commit()
    return Revocation(device_id, serials, cut_off, reloaded, ended)


async def sync_from_index(*, session: AsyncSession, pki: Pki) -> int:
    """Copy each registered device's newest valid certificate (serial, expiry) from the CA's
    issuance index, so certificates issued offline with `kernex-provision` show up too.
    Returns how many devices changed."""
    rows = await anyio.to_thread.run_sync(pki.authority.certificates)
    now = utc_now()
    newest: dict[str, tuple[str, str]] = {}
    for row in rows:
        if row.kind != CertificateKind.DEVICE.value or not row.valid_at(now):
            continue
        if row.common_name not in newest or row.not_after > newest[row.common_name][1]:
            newest[row.common_name] = (row.serial, row.not_after)
    if not newest:
        return 0
    changed = 0
    devices = await session.exec(select(Device).where(col(Device.id).in_(list(newest))))
    for device in devices:
        serial, not_after = newest[device.id]
        if device.cert_serial != serial:
            device.cert_serial = serial
            device.cert_not_after = dt.datetime.fromisoformat(not_after)
            device.updated_at = now
            session.add(device)
            changed += 1
    await session.commit()
    return changed
