"""`kernex-backend serve` over HTTPS: the real server process with a configured certificate
answers TLS with the security headers, and a plain-HTTP request to the same port gets nothing."""

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kernex_devstack.ports import free_port, wait_for_port

BIN = Path(sys.executable).parent


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "api.crt", folder / "api.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture
def https_server(database_url: str, tmp_path: Path) -> Iterator[tuple[int, Path, dict[str, str]]]:
    cert_file, key_file = self_signed(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "KERNEX_ENVIRONMENT": "development",
        "KERNEX_DATABASE_URL": database_url,
        "KERNEX_API__PORT": str(port),
        "KERNEX_API__TLS_CERT_FILE": str(cert_file),
        "KERNEX_API__TLS_KEY_FILE": str(key_file),
        "KERNEX_STORAGE__BACKEND": "local",
        "KERNEX_STORAGE__LOCAL_DIR": str(tmp_path / "bundles"),
    }
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "kernex-backend"), "serve"], env=env, stdout=log, stderr=log
    )
    try:
        assert wait_for_port("127.0.0.1", port, timeout=30), (tmp_path / "serve.log").read_text()
        yield port, cert_file, env
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def test_api_speaks_https_with_security_headers_and_refuses_plain_http(
    https_server: tuple[int, Path, dict[str, str]],
) -> None:
    port, cert_file, _ = https_server
    context = ssl.create_default_context(cafile=str(cert_file))
    with httpx.Client(verify=context, timeout=10) as client:
        response = client.get(f"https://localhost:{port}/api/v1/health")
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert response.headers["cache-control"] == "no-store"
        # Errors carry them too.
        missing = client.get(f"https://localhost:{port}/api/v1/devices")
        assert missing.status_code == 401
        assert missing.headers["x-frame-options"] == "DENY"

    # Plain HTTP to the TLS port: no HTTP answer at all.
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=5) as client:
        client.get(f"http://localhost:{port}/api/v1/health")

    # And a client that does not trust the certificate is refused by its own TLS check.
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=5) as client:
        client.get(f"https://localhost:{port}/api/v1/health")


def test_probe_command_follows_the_server(
    https_server: tuple[int, Path, dict[str, str]], tmp_path: Path
) -> None:
    """`kernex-backend probe`, the image's HEALTHCHECK: 0 while the server answers over TLS,
    1 once nothing listens on the configured port."""
    _, _, env = https_server
    probe = [str(BIN / "kernex-backend"), "probe"]
    healthy = subprocess.run(probe, env=env, capture_output=True, text=True, check=False)
    assert healthy.returncode == 0, healthy.stderr
    assert "answered 200" in healthy.stdout
    elsewhere = {**env, "KERNEX_API__PORT": str(free_port())}
    down = subprocess.run(probe, env=elsewhere, capture_output=True, text=True, check=False)
    assert down.returncode == 1 and "unhealthy" in down.stderr
