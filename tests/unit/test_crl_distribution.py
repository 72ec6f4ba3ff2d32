"""A CRL distribution point (`init-ca --crl-url`, `crl --url`): certificates name it, and the
CRL published there names it back (the Issuing Distribution Point EMQX requires), while the
broker's own file CRL stays without it so that certificates issued before still verify.
OpenSSL's verifier checks both, as a TLS stack would at the handshake."""

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from kernex_provision.authority import CRL, DISTRIBUTED_CRL, CertificateAuthority
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.cli import app

URL = "http://kernex-api.kernex.svc:8000/api/v1/pki/crl"


def device(authority: CertificateAuthority, name: str, tmp_path: Path) -> Path:
    certificate = authority.issue(
        new_key().public_key(), kind=CertificateKind.DEVICE, common_name=name, days=30
    )
    path = tmp_path / f"{name}.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_verify(authority: CertificateAuthority, certificate: Path, crl_pem: bytes) -> str:
    """What `openssl verify` says of `certificate` with `crl_pem` and extended CRL support (the
    distribution point scoping), as a verifier at the handshake would decide."""
    crl_file = certificate.with_suffix(".crl.pem")
    crl_file.write_bytes(crl_pem)
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-extended_crl",
            "-CAfile",
            str(authority.directory / "ca-chain.pem"),
            "-CRLfile",
            str(crl_file),
            str(certificate),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout + result.stderr


def published_pem(authority: CertificateAuthority) -> bytes:
    crl = x509.load_der_x509_crl(authority.published_crl())
    return crl.public_bytes(serialization.Encoding.PEM)


def test_certificates_and_the_published_crl_name_the_same_point(tmp_path: Path) -> None:
    authority = CertificateAuthority.initialise(tmp_path / "ca", crl_url=URL)
    certificate = x509.load_pem_x509_certificate(device(authority, "gw-1", tmp_path).read_bytes())
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [name.value for name in points[0].full_name or []] == [URL]

    published = x509.load_der_x509_crl(authority.published_crl())
    assert published.is_signature_valid(authority.issuing_certificate.public_key())  # type: ignore[arg-type]
    idp = published.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and [n.value for n in idp.value.full_name or []] == [URL]
    # The broker's file CRL has no scope, so it covers every certificate of the CA.
    own = x509.load_pem_x509_crl((authority.directory / CRL).read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        own.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


def test_a_revoked_certificate_fails_against_the_published_crl(tmp_path: Path) -> None:
    authority = CertificateAuthority.initialise(tmp_path / "ca", crl_url=URL)
    good, bad = device(authority, "gw-good", tmp_path), device(authority, "gw-bad", tmp_path)
    authority.revoke(common_name="gw-bad", reason="keyCompromise")

    assert "OK" in openssl_verify(authority, good, published_pem(authority))
    assert "certificate revoked" in openssl_verify(authority, bad, published_pem(authority))


def test_certificates_from_before_the_url_still_verify_with_the_brokers_file(
    tmp_path: Path,
) -> None:
    """Why there are two files: a CRL naming a point does not cover a certificate naming none,
    so Mosquitto given that CRL would refuse every device issued before the URL was set."""
    authority = CertificateAuthority.initialise(tmp_path / "ca")
    older = device(authority, "gw-old", tmp_path)
    assert not (authority.directory / DISTRIBUTED_CRL).exists()
    authority.set_crl_url(URL)
    newer = device(authority, "gw-new", tmp_path)
    file_crl = (authority.directory / CRL).read_bytes()

    assert "OK" in openssl_verify(authority, older, file_crl)
    assert "OK" in openssl_verify(authority, newer, file_crl)
    assert "different CRL scope" in openssl_verify(authority, older, published_pem(authority))
    authority.revoke(common_name="gw-old", reason="superseded")
    assert "certificate revoked" in openssl_verify(
        authority, older, (authority.directory / CRL).read_bytes()
    )


def test_the_url_is_set_and_dropped_from_the_command_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    runner = CliRunner()
    assert runner.invoke(app, ["init-ca", "--ca", str(ca)]).exit_code == 0
    result = runner.invoke(app, ["crl", "--ca", str(ca), "--crl-url", URL])
    assert result.exit_code == 0, result.output
    assert f"CRL distribution URL: {URL}" in result.output
    assert (ca / DISTRIBUTED_CRL).exists()
    result = runner.invoke(app, ["crl", "--ca", str(ca), "--no-url"])
    assert result.exit_code == 0 and "CRL distribution URL: none" in result.output
    assert not (ca / DISTRIBUTED_CRL).exists()
    assert CertificateAuthority(ca).crl_url is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ca.example/crl",
        "http:///crl",
        "http://user:secret@ca.example/crl",
        "http://ca.example/a b",
        "http://ca.example/" + "x" * 600,
    ],
)
def test_a_bad_url_is_refused_with_the_reason(tmp_path: Path, url: str) -> None:
    ca = tmp_path / "ca"
    result = CliRunner().invoke(app, ["init-ca", "--ca", str(ca), "--crl-url", url])
    assert result.exit_code != 0
    assert "CRL URL must be http(s)://host/path" in result.output
    assert not (ca / "issuing-ca.key").exists()
