"""Downloads over HTTPS go through the agent's default trust: the device's system store, read for
each download. A server the store does not vouch for, or one whose certificate names another
host, gets no request; a TLS download resumes, and a stalled TLS server is cut like a plain one.

The device's store is stood in for by SSL_CERT_FILE (OpenSSL reads it when the store is loaded);
the servers are real TLS sockets on loopback with certificates from our own authority.
"""

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kernex_agent.update.download import (
    DownloadError,
    HttpDownloader,
    TransferLimits,
    UrlRefused,
)
from kernex_provision.authority import CHAIN, ROOT_CERT, CertificateAuthority, key_pem, pem
from kernex_provision.certificates import CertificateKind, new_key
from tests.unit.agent.loopback_http import BODY, Behaviour, ranged, server, stall_after

FAST_LIMITS = TransferLimits(stall_s=1.0, min_rate_bps=2000, rate_window_s=1.5, poll_s=0.05)


@dataclass(frozen=True)
class Pki:
    """A trusted authority's root, and server contexts with certificates for loopback."""

    trusted_root: Path
    loopback: ssl.SSLContext  # 127.0.0.1, from the trusted authority
    other_name: ssl.SSLContext  # the trusted authority, but for another host only
    untrusted: ssl.SSLContext  # 127.0.0.1, from an authority nobody trusts


def _server_context(
    authority: CertificateAuthority, folder: Path, *, dns: list[str], ips: list[str]
) -> ssl.SSLContext:
    key = new_key()
    certificate = authority.issue(
        key.public_key(),
        kind=CertificateKind.SERVER,
        common_name=(dns or ips)[0],
        days=1,
        dns_names=dns,
        ip_addresses=ips,
    )
    name = (dns or ips)[0]
    chain, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    # The leaf then the issuing CA: the client holds only the root.
    chain.write_bytes(pem(certificate) + (authority.directory / CHAIN).read_bytes())
    key_file.write_bytes(key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    trusted = CertificateAuthority.initialise(folder / "trusted")
    stranger = CertificateAuthority.initialise(folder / "stranger", organization="Stranger")
    return Pki(
        trusted_root=trusted.directory / ROOT_CERT,
        loopback=_server_context(trusted, folder, dns=[], ips=["127.0.0.1"]),
        other_name=_server_context(trusted, folder, dns=["bundles.example"], ips=[]),
        untrusted=_server_context(stranger, folder, dns=[], ips=["127.0.0.1"]),
    )


@pytest.fixture(autouse=True)
def device_store(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.trusted_root))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


class Recorded:
    """Serves like `behaviour` and keeps every HTTP request that reached it."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []

    def __call__(self, connection: socket.socket, request: bytes) -> None:
        self.requests.append(request)
        self.behaviour(connection, request)


@pytest.fixture
def downloader() -> HttpDownloader:
    """As the agent builds it: no TLS context of its own, so the system store is read."""
    return HttpDownloader(timeout_s=10, limits=FAST_LIMITS)


def test_a_download_over_https_is_verified_by_the_system_store_and_resumes(
    pki: Pki, tmp_path: Path, downloader: HttpDownloader
) -> None:
    partial = tmp_path / "b.bundle"
    partial.write_bytes(BODY[:4096])  # an earlier attempt's part
    with server(ranged, tls=pki.loopback) as url:
        assert url.startswith("https://")
        resumed_from = downloader.fetch(url, partial, size=len(BODY))
    assert resumed_from == 4096
    assert partial.read_bytes() == BODY


@pytest.mark.parametrize(
    ("context", "why"),
    [
        ("untrusted", "self-signed certificate in certificate chain"),
        ("other_name", "IP address mismatch"),
    ],
    ids=["unknown-authority", "another-host"],
)
def test_a_server_the_store_does_not_vouch_for_gets_no_request(
    pki: Pki, tmp_path: Path, downloader: HttpDownloader, context: str, why: str
) -> None:
    served = Recorded(ranged)
    partial = tmp_path / "b.bundle"
    with (
        server(served, tls=getattr(pki, context)) as url,
        pytest.raises(DownloadError, match=why),
    ):
        downloader.fetch(url, partial, size=len(BODY))
    assert served.requests == []  # the presigned URL never left the device
    assert not partial.exists()


def test_a_stalled_tls_server_is_cut(pki: Pki, tmp_path: Path, downloader: HttpDownloader) -> None:
    with server(stall_after(100), tls=pki.loopback) as url:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="no data for 1 s"):
            downloader.fetch(url, tmp_path / "b", size=len(BODY))
        assert time.monotonic() - started < 4
    assert (tmp_path / "b").stat().st_size == 100  # kept, to resume from


def test_a_redirect_from_https_to_plain_http_is_refused(
    pki: Pki, tmp_path: Path, downloader: HttpDownloader
) -> None:
    plain = Recorded(ranged)
    with server(plain) as plain_url:

        def redirect(connection: socket.socket, _: bytes) -> None:
            connection.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {plain_url}\r\nContent-Length: 0\r\n\r\n".encode()
            )

        with (
            server(redirect, tls=pki.loopback) as url,
            pytest.raises(UrlRefused, match="https to plain http"),
        ):
            downloader.fetch(url, tmp_path / "b", size=len(BODY))
    assert plain.requests == []


def test_a_redirect_to_another_https_server_is_followed(
    pki: Pki, tmp_path: Path, downloader: HttpDownloader
) -> None:
    with server(ranged, tls=pki.loopback) as target:

        def redirect(connection: socket.socket, _: bytes) -> None:
            connection.sendall(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )

        with server(redirect, tls=pki.loopback) as url:
            downloader.fetch(url, tmp_path / "b", size=len(BODY))
    assert (tmp_path / "b").read_bytes() == BODY
