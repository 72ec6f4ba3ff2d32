"""The provisioning library and CLI: CA layout, CSR checks, revocation state, kits, rendering."""

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from kernex_agent.config import load_config
from kernex_protocol.ids import InvalidDeviceId
from kernex_provision import broker as broker_files
from kernex_provision.authority import AuthorityError, CertificateAuthority
from kernex_provision.certificates import (
    CertificateKind,
    CsrRejected,
    check_csr,
    make_csr,
    new_key,
)
from kernex_provision.cli import app

BAD_IDS = ["a/b", "a+b", "#", "$SYS", "", "x" * 65, "a\x00b"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.initialise(tmp_path_factory.mktemp("ca") / "ca")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_layout_and_permissions(ca: CertificateAuthority) -> None:
    d = ca.directory
    for name in ("root-ca.crt", "issuing-ca.crt", "ca-chain.pem", "crl.pem", "index.json"):
        assert (d / name).is_file(), name
    assert mode(d / "root-ca.key") == 0o600
    assert mode(d / "issuing-ca.key") == 0o600
    root = x509.load_pem_x509_certificate((d / "root-ca.crt").read_bytes())
    issuing = ca.issuing_certificate
    issuing.verify_directly_issued_by(root)
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert isinstance(issuing.public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(AuthorityError, match="refusing to overwrite"):
        CertificateAuthority.initialise(d)


def test_root_key_can_live_elsewhere(tmp_path: Path) -> None:
    CertificateAuthority.initialise(tmp_path / "ca", root_key_dir=tmp_path / "offline")
    assert not (tmp_path / "ca" / "root-ca.key").exists()
    assert (tmp_path / "offline" / "root-ca.key").exists()


def test_passphrase_protects_the_keys(tmp_path: Path) -> None:
    CertificateAuthority.initialise(tmp_path / "ca", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "ca" / "issuing-ca.key").read_bytes()
    key = new_key()
    with pytest.raises(AuthorityError, match="encrypted"):
        CertificateAuthority(tmp_path / "ca").issue(
            key.public_key(), kind=CertificateKind.DEVICE, common_name="d", days=1
        )
    with pytest.raises(AuthorityError, match="wrong passphrase"):
        CertificateAuthority(tmp_path / "ca", passphrase=b"nope").issue(
            key.public_key(), kind=CertificateKind.DEVICE, common_name="d", days=1
        )
    cert = CertificateAuthority(tmp_path / "ca", passphrase=b"correct horse").issue(
        key.public_key(), kind=CertificateKind.DEVICE, common_name="d", days=1
    )
    assert cert.subject.rfc4514_string().endswith("CN=d") or "CN=d" in cert.subject.rfc4514_string()


@pytest.mark.parametrize("device_id", BAD_IDS)
def test_device_certificates_refuse_bad_ids(ca: CertificateAuthority, device_id: str) -> None:
    with pytest.raises(InvalidDeviceId):
        ca.issue(new_key().public_key(), kind=CertificateKind.DEVICE, common_name=device_id, days=1)


def test_device_certificate_profile(ca: CertificateAuthority) -> None:
    cert = ca.issue(
        new_key().public_key(), kind=CertificateKind.DEVICE, common_name="dev-p", days=30
    )
    cert.verify_directly_issued_by(ca.issuing_certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_csr_checks() -> None:
    key = new_key()
    assert check_csr(make_csr(key, "dev-1"), "dev-1") is not None
    with pytest.raises(CsrRejected, match="common name must be the device ID 'dev-1'"):
        check_csr(make_csr(key, "dev-2"), "dev-1")
    der = bytearray(make_csr(key, "dev-1").public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    with pytest.raises(CsrRejected, match="signature does not verify"):
        check_csr(x509.load_der_x509_csr(bytes(der)), "dev-1")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrRejected, match="at least 2048"):
        check_csr(make_csr(weak, "dev-1"), "dev-1")
    odd_curve = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(CsrRejected, match="unsupported elliptic curve"):
        check_csr(make_csr(odd_curve, "dev-1"), "dev-1")
    with pytest.raises(InvalidDeviceId):
        check_csr(make_csr(key, "a/b"), "a/b")


def test_revocation_index_crl_and_blocked_identities(tmp_path: Path) -> None:
    ca = CertificateAuthority.initialise(tmp_path / "ca")
    first = ca.issue(
        new_key().public_key(), kind=CertificateKind.DEVICE, common_name="rot", days=30
    )
    second = ca.issue(
        new_key().public_key(), kind=CertificateKind.DEVICE, common_name="rot", days=30
    )
    ca.issue(new_key().public_key(), kind=CertificateKind.DEVICE, common_name="gone", days=30)

    ca.revoke(serial=f"{first.serial_number:x}", reason="superseded")
    assert ca.blocked_identities() == []  # rot still holds a valid certificate
    assert not ca.is_live(first.serial_number) and ca.is_live(second.serial_number)

    ca.revoke(common_name="gone")
    assert ca.blocked_identities() == ["gone"]
    crl = x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.issuing_certificate.public_key())  # type: ignore[arg-type]
    revoked = {r.serial_number for r in crl}
    assert first.serial_number in revoked and second.serial_number not in revoked
    with pytest.raises(AuthorityError, match="no live certificate"):
        ca.revoke(common_name="gone")

    # An expired certificate blocks its identity too.
    ca.issue(
        new_key().public_key(),
        kind=CertificateKind.DEVICE,
        common_name="old",
        days=1,
        issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=5),
    )
    assert "old" in ca.blocked_identities()


def crl_entries(ca: CertificateAuthority) -> dict[int, x509.ReasonFlags | None]:
    """Serial: reason of every entry of the CA's CRL (None: no reason given)."""
    crl = x509.load_pem_x509_crl((ca.directory / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.issuing_certificate.public_key())  # type: ignore[arg-type]
    entries: dict[int, x509.ReasonFlags | None] = {}
    for entry in crl:
        try:
            entries[entry.serial_number] = entry.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason
        except x509.ExtensionNotFound:
            entries[entry.serial_number] = None
    return entries


def test_a_hold_lists_the_live_certificates_of_a_device_until_lifted(tmp_path: Path) -> None:
    ca = CertificateAuthority.initialise(tmp_path / "ca")
    layout = broker_files.BrokerLayout(tmp_path / "broker")
    layout.directory.mkdir()

    def device(name: str) -> x509.Certificate:
        key = new_key().public_key()
        return ca.issue(key, kind=CertificateKind.DEVICE, common_name=name, days=30)

    old, current, other = device("noisy"), device("noisy"), device("quiet")
    ca.revoke(serial=f"{old.serial_number:x}", reason="superseded")

    assert ca.set_held(["noisy"]) is True
    assert ca.held_identities() == ["noisy"]
    entries = crl_entries(ca)
    assert entries[current.serial_number] == x509.ReasonFlags.certificate_hold
    assert entries[old.serial_number] is None  # revoked for good, not held
    assert other.serial_number not in entries
    assert ca.blocked_identities() == []  # still certified: held, not revoked
    assert ca.set_held(["noisy"]) is False  # unchanged: no new CRL

    # The broker's copy: the CRL with the hold, and the ACL denying the identity.
    broker_files.publish_revocations(ca, layout)
    assert layout.crl.read_bytes() == (ca.directory / "crl.pem").read_bytes()
    assert "user noisy\ntopic deny #" in layout.acl.read_text()
    # An operator's `kernex-provision crl` keeps the hold.
    ca.write_crl()
    assert crl_entries(ca)[current.serial_number] == x509.ReasonFlags.certificate_hold

    broker_files.publish_revocations(ca, layout, held=[])
    assert ca.held_identities() == []
    assert current.serial_number not in crl_entries(ca)
    assert "user noisy\n" not in layout.acl.read_text()
    with pytest.raises(InvalidDeviceId):
        ca.set_held(["a/b"])


def test_takeover_certificates_are_short_lived_and_only_for_certified_devices(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.initialise(tmp_path / "ca")
    ca.issue(new_key().public_key(), kind=CertificateKind.DEVICE, common_name="dev-1", days=30)
    ca.issue(new_key().public_key(), kind=CertificateKind.SERVICE, common_name="svc-1", days=30)
    certificate, key = ca.issue_takeover("dev-1")
    assert certificate.public_key() == key.public_key()
    lifetime = certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=4) < lifetime <= dt.timedelta(minutes=5)
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    rows = [r for r in ca.certificates() if r.serial_int == certificate.serial_number]
    assert [(r.common_name, r.kind) for r in rows] == [("dev-1", "takeover")]
    # A takeover certificate is never held with its device, and never counts as its device's.
    ca.set_held(["dev-1"])
    assert certificate.serial_number not in crl_entries(ca)
    for name in ("svc-1", "nobody"):
        with pytest.raises(AuthorityError, match="not a device this CA has certified"):
            ca.issue_takeover(name)
    # Revoking the device revokes its own certificate only; then nothing is left to revoke.
    assert [r.kind for r in ca.revoke(common_name="dev-1")] == ["device"]
    with pytest.raises(AuthorityError, match="no live certificate"):
        ca.revoke(common_name="dev-1")


def test_crl_numbers_grow(tmp_path: Path) -> None:
    ca = CertificateAuthority.initialise(tmp_path / "ca")
    numbers = [
        ca.write_crl(valid_days=1)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        for _ in range(3)
    ]
    assert numbers == sorted(set(numbers)) and len(numbers) == 3


def test_broker_rendering(tmp_path: Path, ca: CertificateAuthority) -> None:
    layout = broker_files.BrokerLayout(tmp_path / "broker")
    layout.directory.mkdir()
    broker_files.render_config(layout, port=8883, bind_address="127.0.0.1")
    conf = layout.conf.read_text()
    for line in (
        "listener 8883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"crlfile {layout.crl}",
        "persistence true",
        f"max_packet_size {broker_files.MAX_PACKET_SIZE}",
    ):
        assert line in conf.splitlines(), line
    assert "$" not in conf.replace("$SYS", "")  # every placeholder was filled

    broker_files.render_acl(layout, blocked=["dev-x"])
    acl = layout.acl.read_text().splitlines()
    assert acl.index("user dev-x") < acl.index("topic deny #")
    assert "pattern read kernex/v1/devices/%u/deployment" in acl
    assert not any(line.startswith("pattern write") and "deployment" in line for line in acl)
    with pytest.raises(InvalidDeviceId):
        broker_files.render_acl(layout, blocked=["x/#"])
    # One grant per backend replica's service identity.
    broker_files.render_acl(layout, blocked=[], service_identities=["kx-b", "kx-a"])
    acl = layout.acl.read_text().splitlines()
    for name in ("kx-a", "kx-b"):
        assert acl[acl.index(f"user {name}") + 1] == "topic readwrite kernex/v1/devices/#"
    assert "user kernex-backend" not in acl


runner = CliRunner()


@pytest.mark.parametrize("device_id", ["a/b", "a+b", "#", "$SYS", "x" * 65, "has space"])
def test_cli_refuses_bad_ids_with_a_clear_message(tmp_path: Path, device_id: str) -> None:
    assert runner.invoke(app, ["init-ca", "--ca", str(tmp_path / "ca")]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "issue-device",
            device_id,
            "--device-type",
            "gw",
            "--ca",
            str(tmp_path / "ca"),
            "--out",
            str(tmp_path / "kit"),
        ],
    )
    assert result.exit_code == 1
    assert "invalid device ID" in result.output
    assert not (tmp_path / "kit").exists()


def test_cli_kit_and_csr_flow(tmp_path: Path) -> None:
    ca_dir = str(tmp_path / "ca")
    assert runner.invoke(app, ["init-ca", "--ca", ca_dir]).exit_code == 0
    (tmp_path / "ca" / "release-keys" / "release-1.pub").write_text("public key")
    result = runner.invoke(
        app,
        [
            "issue-device",
            "--device-type",
            "gw",
            "dev-9",
            "--ca",
            ca_dir,
            "--out",
            str(tmp_path / "kit"),
            "--broker-host",
            "mqtt.example",
        ],
    )
    assert result.exit_code == 0, result.output
    kit = tmp_path / "kit"
    assert mode(kit / "device.key") == 0o600
    assert (kit / "release-keys" / "release-1.pub").read_text() == "public key"
    config = (kit / "agent.toml").read_text()
    assert 'device_id = "dev-9"' in config and 'host = "mqtt.example"' in config
    # The agent reads the kit's configuration as it is, paths relative to the kit.
    loaded = load_config(kit / "agent.toml", environ={})
    assert (loaded.device_id, loaded.device_type, loaded.mqtt.host) == (
        "dev-9",
        "gw",
        "mqtt.example",
    )
    assert loaded.mqtt.key_file == (kit / "device.key").resolve()
    assert loaded.release.trusted_keys_dir == (kit / "release-keys").resolve()

    # With a CSR, the key stays on the device: the kit has no key.
    key = new_key()
    (tmp_path / "dev.csr").write_bytes(
        make_csr(key, "dev-10").public_bytes(serialization.Encoding.PEM)
    )
    result = runner.invoke(
        app,
        [
            "issue-device",
            "--device-type",
            "gw",
            "dev-10",
            "--ca",
            ca_dir,
            "--csr",
            str(tmp_path / "dev.csr"),
            "--out",
            str(tmp_path / "kit2"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "kit2" / "device.key").exists()
    mismatch = runner.invoke(
        app,
        [
            "issue-device",
            "--device-type",
            "gw",
            "dev-11",
            "--ca",
            ca_dir,
            "--csr",
            str(tmp_path / "dev.csr"),
            "--out",
            str(tmp_path / "kit3"),
        ],
    )
    assert mismatch.exit_code == 1 and "common name must be the device ID" in mismatch.output

    listing = runner.invoke(app, ["list", "--ca", ca_dir])
    assert "dev-9" in listing.output and "dev-10" in listing.output
    revoked = runner.invoke(app, ["revoke", "dev-9", "--ca", ca_dir])
    assert revoked.exit_code == 0 and "revoked dev-9" in revoked.output
    assert "revoked" in runner.invoke(app, ["list", "--ca", ca_dir]).output


def test_device_and_service_identities_cannot_share_a_name(tmp_path: Path) -> None:
    authority = CertificateAuthority.initialise(tmp_path / "ca", organization="Test")
    authority.issue(
        new_key().public_key(), kind=CertificateKind.SERVICE, common_name="svc-1", days=1
    )
    with pytest.raises(AuthorityError, match="service identity"):
        authority.issue(
            new_key().public_key(), kind=CertificateKind.DEVICE, common_name="svc-1", days=1
        )
    assert authority.service_identities() == ["svc-1"]


def test_ca_backup_round_trip_and_refusals(tmp_path: Path) -> None:
    from kernex_provision.ca_backup import CaBackupError, seal, unseal

    ca_dir = tmp_path / "ca"
    authority = CertificateAuthority.initialise(ca_dir)
    blob = seal(ca_dir, b"correct horse battery")
    assert b"PRIVATE KEY" not in blob  # encrypted, not just packed
    restored = tmp_path / "restored"
    names = unseal(blob, b"correct horse battery", restored)
    assert "issuing-ca.key" in names
    for path in ca_dir.rglob("*"):
        if path.is_file() and path.name != ".lock":
            copy = restored / path.relative_to(ca_dir)
            assert copy.read_bytes() == path.read_bytes()
            assert copy.stat().st_mode & 0o777 == path.stat().st_mode & 0o777
    # The restored CA works: it issues under the same chain.
    assert CertificateAuthority(restored).chain_pem == authority.chain_pem

    with pytest.raises(CaBackupError, match="wrong passphrase"):
        unseal(blob, b"wrong horse battery", tmp_path / "other")
    assert not (tmp_path / "other").exists()  # nothing written
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CaBackupError, match="damaged"):
        unseal(tampered, b"correct horse battery", tmp_path / "other")
    with pytest.raises(CaBackupError, match="not empty"):
        unseal(blob, b"correct horse battery", restored)
    with pytest.raises(CaBackupError, match="at least 12"):
        seal(ca_dir, b"short")
