"""The certificate authority on disk: keys, certificates, the issuance index and the CRL.

Layout of a CA directory (created by `kernex-provision init-ca`):

    root-ca.crt         the trust anchor (public)
    root-ca.key         0600; move it offline after init (only needed to re-issue the issuing CA)
    issuing-ca.crt      signs every leaf certificate and the CRL
    issuing-ca.key      0600
    ca-chain.pem        issuing CA + root: what devices and the broker trust
    crl.pem             revoked leaf certificates and those on hold, re-issued by
                        `kernex-provision crl`: the file Mosquitto reads
    crl.der             with a distribution URL set (`init-ca --crl-url`, `crl --url`): the
                        same list naming that URL, for brokers that fetch it there (EMQX)
    index.json          every certificate issued: serial, CN, kind, expiry, revocation; and
                        the device identities on hold (quarantined by the backend)
    release-keys/       trusted release public keys, copied into device kits
    notice-keys/        the backend's notice public keys, copied into device kits

Every write goes to a temporary file that is fsynced and renamed into place, under an exclusive
lock, so a crash never leaves a half-written key, index or CRL, and two operators (or the backend
and an operator) never interleave.
"""

import contextlib
import datetime as dt
import fcntl
import json
import os
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kernex_protocol.ids import validate_device_id
from kernex_provision.certificates import (
    CertificateKind,
    Issuer,
    PrivateKey,
    PublicKey,
    common_name,
    make_crl,
    make_issuing_ca,
    make_leaf,
    make_root_ca,
    new_key,
)

ROOT_CERT = "root-ca.crt"
ROOT_KEY = "root-ca.key"
ISSUING_CERT = "issuing-ca.crt"
ISSUING_KEY = "issuing-ca.key"
CHAIN = "ca-chain.pem"
CRL = "crl.pem"
DISTRIBUTED_CRL = "crl.der"
INDEX = "index.json"
RELEASE_KEYS = "release-keys"
NOTICE_KEYS = "notice-keys"
_LOCK = ".lock"


_MAX_URL = 512


def check_crl_url(url: str) -> str:
    """A CRL distribution URL goes into every certificate: plain http(s) with a host, short."""
    parsed = urllib.parse.urlsplit(url)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.username is not None
        or len(url) > _MAX_URL
        or any(c.isspace() or ord(c) < 0x20 for c in url)
    ):
        raise ValueError(
            f"CRL URL must be http(s)://host/path, without credentials, at most {_MAX_URL} "
            f"characters: {url!r}"
        )
    return url


class AuthorityError(RuntimeError):
    """The CA directory is missing, incomplete or refuses the operation."""


@dataclass(slots=True)
class IssuedCertificate:
    """One row of the issuance index."""

    serial: str  # hex, as OpenSSL and Mosquitto print it
    common_name: str
    kind: str
    not_before: str
    not_after: str
    revoked_at: str | None = None
    reason: str | None = None

    @property
    def serial_int(self) -> int:
        """The serial as an integer."""
        return int(self.serial, 16)

    def valid_at(self, when: dt.datetime) -> bool:
        """Not revoked and within its validity period at `when`."""
        return self.revoked_at is None and dt.datetime.fromisoformat(
            self.not_before
        ) <= when < dt.datetime.fromisoformat(self.not_after)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` whole or not at all: a failure (a full disk) leaves the old
    file as it was and no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than it was given
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def pem(certificate: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM encoding of a private key, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write a private key readable by its owner only."""
    write_atomic(path, key_pem(key, passphrase), 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write public material (certificates, chains, CRLs)."""
    write_atomic(path, data, 0o644)


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    """Load a PEM private key; a clear error if the passphrase is missing or wrong."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except FileNotFoundError:
        raise AuthorityError(f"missing key file {path}") from None
    except TypeError:
        raise AuthorityError(f"{path.name} is encrypted: give its passphrase") from None
    except ValueError:
        raise AuthorityError(
            f"cannot decrypt {path.name}: wrong passphrase or damaged file"
        ) from None
    if not isinstance(key, PrivateKey):
        raise AuthorityError(f"{path.name} holds an unsupported key type")
    return key


class CertificateAuthority:
    """A CA directory and the operations on it."""

    def __init__(self, directory: Path, *, passphrase: bytes | None = None) -> None:
        self.directory = directory
        self._passphrase = passphrase

    # -- set-up -------------------------------------------------------------------------------

    @classmethod
    def initialise(
        cls,
        directory: Path,
        *,
        organization: str = "Kernex",
        passphrase: bytes | None = None,
        root_key_dir: Path | None = None,
        root_days: int = 20 * 365,
        issuing_days: int = 10 * 365,
        crl_url: str | None = None,
    ) -> "CertificateAuthority":
        """Create a root CA and an issuing CA under it in a new directory; `crl_url` is where
        the CRL will be published, named in every certificate issued (see `set_crl_url`)."""
        if crl_url is not None:
            check_crl_url(crl_url)
        if (directory / ISSUING_KEY).exists():
            raise AuthorityError(f"{directory} already holds a CA; refusing to overwrite it")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        root_key, issuing_key = new_key(), new_key()
        root = make_root_ca(
            root_key,
            common_name=f"{organization} Root CA",
            organization=organization,
            days=root_days,
        )
        issuing = make_issuing_ca(
            issuing_key,
            Issuer(root, root_key),
            common_name=f"{organization} Issuing CA 1",
            organization=organization,
            days=issuing_days,
        )
        key_dir = root_key_dir or directory
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_key(key_dir / ROOT_KEY, root_key, passphrase)
        write_private_key(directory / ISSUING_KEY, issuing_key, passphrase)
        write_public(directory / ROOT_CERT, pem(root))
        write_public(directory / ISSUING_CERT, pem(issuing))
        write_public(directory / CHAIN, pem(issuing) + pem(root))
        (directory / RELEASE_KEYS).mkdir(exist_ok=True)
        authority = cls(directory, passphrase=passphrase)
        with authority._locked():
            authority._save_index({"crl_number": 0, "certificates": [], "crl_url": crl_url})
            authority._write_crl_locked(valid_days=7)
        return authority

    # -- reading ------------------------------------------------------------------------------

    def _require(self, name: str) -> Path:
        path = self.directory / name
        if not path.exists():
            raise AuthorityError(f"{path} is missing: is {self.directory} a CA made by init-ca?")
        return path

    @property
    def issuing_certificate(self) -> x509.Certificate:
        """The issuing CA's certificate."""
        return x509.load_pem_x509_certificate(self._require(ISSUING_CERT).read_bytes())

    @property
    def chain_pem(self) -> bytes:
        """Issuing CA and root, as devices and the broker trust them."""
        return self._require(CHAIN).read_bytes()

    def _issuer(self) -> Issuer:
        return Issuer(
            self.issuing_certificate, load_private_key(self._require(ISSUING_KEY), self._passphrase)
        )

    @property
    def crl_url(self) -> str | None:
        """Where the CRL is published for brokers that fetch it (None: nowhere)."""
        url = self._load_index().get("crl_url")
        return str(url) if url else None

    def set_crl_url(self, url: str | None, *, crl_valid_days: int = 7) -> None:
        """Name (or, with None, stop naming) a CRL distribution URL. Certificates issued from
        now on carry it; older ones do not, and brokers that only fetch CRLs from there (EMQX)
        cannot check them: renew them, or rely on the ACL's deny and the kick (emqx-sync)."""
        if url is not None:
            check_crl_url(url)
        with self._locked():
            index = self._load_index()
            index["crl_url"] = url
            self._save_index(index)
            self._write_crl_locked(valid_days=crl_valid_days)

    def certificates(self) -> list[IssuedCertificate]:
        """Every certificate in the index, oldest first."""
        return [IssuedCertificate(**row) for row in self._load_index()["certificates"]]

    def _load_index(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._require(INDEX).read_text())
        return data

    def _save_index(self, data: dict[str, Any]) -> None:
        write_public(self.directory / INDEX, json.dumps(data, indent=1, sort_keys=True).encode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- issuing ------------------------------------------------------------------------------

    def issue(
        self,
        public_key: PublicKey,
        *,
        kind: CertificateKind,
        common_name: str,
        days: int,
        dns_names: list[str] | None = None,
        ip_addresses: list[str] | None = None,
        issued_at: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Sign a leaf certificate for `public_key` and record it in the index."""
        self._check_name_kinds([common_name], kind)
        certificate = make_leaf(
            public_key,
            self._issuer(),
            kind=kind,
            common_name=common_name,
            organization=self._organization(),
            days=days,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            issued_at=issued_at,
            crl_url=self.crl_url,
        )
        self._record([(certificate, common_name, kind)])
        return certificate

    def issue_devices(
        self, requests: list[tuple[str, PublicKey]], *, days: int
    ) -> list[x509.Certificate]:
        """Sign many device certificates at once (one index write): fleets and simulators."""
        names = [name for name, _ in requests]
        self._check_name_kinds(names, CertificateKind.DEVICE)
        issuer, organization, crl_url = self._issuer(), self._organization(), self.crl_url
        certificates = [
            make_leaf(
                public_key,
                issuer,
                kind=CertificateKind.DEVICE,
                common_name=name,
                organization=organization,
                days=days,
                crl_url=crl_url,
            )
            for name, public_key in requests
        ]
        self._record(
            [(c, name, CertificateKind.DEVICE) for c, name in zip(certificates, names, strict=True)]
        )
        return certificates

    def issue_takeover(
        self, common_name: str, *, minutes: float = 5
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A certificate and its new key with which the backend takes over the broker session of
        the device `common_name`, and so ends it (kind TAKEOVER, valid for `minutes`, recorded
        in the index). Only for a device this CA has certified: never a service's identity."""
        devices = {
            row.common_name
            for row in self.certificates()
            if row.kind == CertificateKind.DEVICE.value
        }
        if common_name not in devices:
            raise AuthorityError(f"{common_name!r} is not a device this CA has certified")
        key = new_key()
        certificate = make_leaf(
            key.public_key(),
            self._issuer(),
            kind=CertificateKind.TAKEOVER,
            common_name=common_name,
            organization=self._organization(),
            days=minutes / (24 * 60),
            crl_url=self.crl_url,
        )
        self._record([(certificate, common_name, CertificateKind.TAKEOVER)])
        return certificate, key

    def _organization(self) -> str:
        names = self._issuer().certificate.subject.get_attributes_for_oid(
            x509.NameOID.ORGANIZATION_NAME
        )
        return str(names[0].value) if names else "Kernex"

    def _check_name_kinds(self, names: list[str], kind: CertificateKind) -> None:
        """A device named like a service identity would get the service's broker access."""
        if kind not in (CertificateKind.DEVICE, CertificateKind.SERVICE):
            return
        other = (
            CertificateKind.SERVICE if kind == CertificateKind.DEVICE else CertificateKind.DEVICE
        )
        taken = {row.common_name for row in self.certificates() if row.kind == other.value}
        clash = sorted(taken.intersection(names))
        if clash:
            raise AuthorityError(
                f"{clash[0]!r} is already a {other.value} identity; pick another name"
            )

    def _record(self, issued: list[tuple[x509.Certificate, str, CertificateKind]]) -> None:
        with self._locked():
            index = self._load_index()
            for certificate, common_name, kind in issued:
                index["certificates"].append(
                    asdict(
                        IssuedCertificate(
                            serial=f"{certificate.serial_number:x}",
                            common_name=common_name,
                            kind=kind.value,
                            not_before=certificate.not_valid_before_utc.isoformat(),
                            not_after=certificate.not_valid_after_utc.isoformat(),
                        )
                    )
                )
            self._save_index(index)

    # -- revoking -----------------------------------------------------------------------------

    def revoke(
        self,
        *,
        common_name: str | None = None,
        serial: str | None = None,
        reason: str = "unspecified",
        crl_valid_days: int = 7,
    ) -> list[IssuedCertificate]:
        """Revoke by serial, or every live certificate of a common name; re-issues the CRL."""
        if (common_name is None) == (serial is None):
            raise ValueError("give exactly one of common_name or serial")
        wanted = serial.lower().lstrip("0") if serial else None
        now = dt.datetime.now(dt.UTC).isoformat()
        revoked: list[IssuedCertificate] = []
        with self._locked():
            index = self._load_index()
            for row in index["certificates"]:
                match = (
                    (row["serial"].lstrip("0") == wanted)
                    if wanted
                    else (row["common_name"] == common_name)
                )
                if (
                    match
                    and row["revoked_at"] is None
                    # CAs are never revoked here; a takeover certificate is never a device's
                    # own (the backend's, for minutes), so revoking a device leaves it be.
                    and row["kind"] not in ("root-ca", "issuing-ca", CertificateKind.TAKEOVER.value)
                ):
                    row["revoked_at"] = now
                    row["reason"] = reason
                    revoked.append(IssuedCertificate(**row))
            if not revoked:
                target = f"serial {serial}" if serial else f"{common_name!r}"
                raise AuthorityError(f"no live certificate for {target}")
            self._save_index(index)
            self._write_crl_locked(valid_days=crl_valid_days)
        return revoked

    # -- holding ------------------------------------------------------------------------------

    def held_identities(self) -> list[str]:
        """Device IDs on hold: their live certificates are in the CRL as certificateHold, so the
        broker refuses their handshakes, until the hold is lifted (the backend's quarantine)."""
        held: dict[str, str] = self._load_index().get("held", {})
        return sorted(held)

    def set_held(self, common_names: Iterable[str], *, crl_valid_days: int = 7) -> bool:
        """Make `common_names` exactly the identities on hold; re-issue the CRL if that changed
        (whether it did is returned)."""
        wanted = sorted(set(common_names))
        for name in wanted:
            validate_device_id(name)
        with self._locked():
            index = self._load_index()
            held: dict[str, str] = index.get("held", {})
            if sorted(held) == wanted:
                return False
            now = dt.datetime.now(dt.UTC).isoformat()
            index["held"] = {name: held.get(name, now) for name in wanted}
            self._save_index(index)
            self._write_crl_locked(valid_days=crl_valid_days)
        return True

    def write_crl(self, *, valid_days: int = 7) -> x509.CertificateRevocationList:
        """Re-issue the CRL with a fresh nextUpdate (run it well before the old one expires)."""
        with self._locked():
            return self._write_crl_locked(valid_days=valid_days)

    def _write_crl_locked(self, *, valid_days: int) -> x509.CertificateRevocationList:
        index = self._load_index()
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        revoked = [
            (int(row["serial"], 16), dt.datetime.fromisoformat(row["revoked_at"]))
            for row in index["certificates"]
            if row["revoked_at"] is not None
        ]
        now = dt.datetime.now(dt.UTC)
        held_since: dict[str, str] = index.get("held", {})
        held = [
            (int(row["serial"], 16), dt.datetime.fromisoformat(held_since[row["common_name"]]))
            for row in index["certificates"]
            if row["common_name"] in held_since
            and row["kind"] == CertificateKind.DEVICE.value
            and IssuedCertificate(**row).valid_at(now)
        ]
        issuer = self._issuer()
        crl = make_crl(
            issuer, revoked, number=index["crl_number"], valid_days=valid_days, held=held
        )
        write_public(self.directory / CRL, crl.public_bytes(serialization.Encoding.PEM))
        distributed = self.directory / DISTRIBUTED_CRL
        if url := index.get("crl_url"):
            published = make_crl(
                issuer,
                revoked,
                number=index["crl_number"],
                valid_days=valid_days,
                held=held,
                distribution_url=url,
            )
            write_public(distributed, published.public_bytes(serialization.Encoding.DER))
        else:
            distributed.unlink(missing_ok=True)
        self._save_index(index)
        return crl

    def published_crl(self) -> bytes:
        """The CRL as served at the distribution URL (DER, RFC 5280 section 4.2.1.13): the one
        naming that URL when one is set, else the broker's own list."""
        distributed = self.directory / DISTRIBUTED_CRL
        if distributed.exists():
            return distributed.read_bytes()
        crl = x509.load_pem_x509_crl(self._require(CRL).read_bytes())
        return crl.public_bytes(serialization.Encoding.DER)

    def is_live(self, serial: int) -> bool:
        """Whether the certificate with `serial` is in the index, unrevoked and unexpired."""
        now = dt.datetime.now(dt.UTC)
        return any(row.serial_int == serial and row.valid_at(now) for row in self.certificates())

    def blocked_identities(self, *, now: dt.datetime | None = None) -> list[str]:
        """Device IDs that were issued certificates but hold no valid one now.

        The broker denies these identities everything, which is what cuts off a revoked
        device's live session (Mosquitto does not re-check certificates of open sessions).
        """
        now = now or dt.datetime.now(dt.UTC)
        issued: dict[str, bool] = {}
        for row in self.certificates():
            if row.kind != CertificateKind.DEVICE.value:
                continue
            issued[row.common_name] = issued.get(row.common_name, False) or row.valid_at(now)
        return sorted(name for name, has_valid in issued.items() if not has_valid)

    def service_identities(self, *, now: dt.datetime | None = None) -> list[str]:
        """Service identities (backend replicas) holding a valid certificate."""
        now = now or dt.datetime.now(dt.UTC)
        return sorted(
            {
                row.common_name
                for row in self.certificates()
                if row.kind == CertificateKind.SERVICE.value and row.valid_at(now)
            }
        )


def describe(certificate: x509.Certificate) -> str:
    """One line naming a certificate, for CLI output."""
    return (
        f"{common_name(certificate)} serial={certificate.serial_number:x} "
        f"not_after={certificate.not_valid_after_utc.isoformat()}"
    )
