"""Mosquitto with Kernex's rendered mTLS configuration, on a free loopback port.

On first use in a state directory it creates a CA, the broker's server certificate and the
backend's service identity; later runs reuse them, so device kits stay valid across demo runs.
"""

import os
import shutil
import signal
import time
from pathlib import Path

from kernex_devstack.ports import free_port
from kernex_devstack.process import ManagedProcess, ServiceStartError, ensure_traversable
from kernex_provision import broker as broker_files
from kernex_provision.authority import CertificateAuthority, pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.notice_keys import NOTICE_KEY, create_notice_key

SERVICE_IDENTITY = broker_files.DEFAULT_SERVICE_IDENTITY
RELOAD_LINE = "Reloading config."
# Debian's package creates this user; Mosquitto drops to it when started as root.
BROKER_USER = "mosquitto"


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ServiceStartError("mosquitto is not installed; run `make bootstrap` (as root) first")
    return found


class EmbeddedBroker:
    """A Mosquitto broker plus the CA whose certificates it trusts."""

    def __init__(self, state_dir: Path, *, port: int | None = None) -> None:
        self.state_dir = state_dir
        self.ca_dir = state_dir / "ca"
        self.service_dir = state_dir / "service"
        self.layout = broker_files.BrokerLayout(state_dir / "broker")
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._process: ManagedProcess | None = None
        self._log_offset = 0

    @property
    def notice_key_file(self) -> Path:
        """The backend's notice-signing key (KERNEX_NOTICE__KEY_FILE)."""
        return self.state_dir / "notice" / NOTICE_KEY

    @property
    def authority(self) -> CertificateAuthority:
        """The CA that issues device certificates for this broker."""
        return CertificateAuthority(self.ca_dir)

    def _prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not (self.ca_dir / "issuing-ca.key").exists():
            CertificateAuthority.initialise(self.ca_dir, organization="Kernex Dev")
        authority = self.authority
        layout = self.layout
        layout.data_dir.mkdir(parents=True, exist_ok=True)
        if not layout.server_cert.exists():
            key = new_key()
            cert = authority.issue(
                key.public_key(),
                kind=CertificateKind.SERVER,
                common_name="localhost",
                days=825,
                dns_names=["localhost"],
                ip_addresses=["127.0.0.1", "::1"],
            )
            write_private_key(layout.server_key, key)
            write_public(layout.server_cert, pem(cert))
        if not (self.service_dir / "service.crt").exists():
            self._write_service_identity(SERVICE_IDENTITY, self.service_dir, days=825)
        if not self.notice_key_file.exists():
            # The development notice key: the backend signs notices with it, kits trust it.
            create_notice_key(self.ca_dir, self.notice_key_file.parent)
        run_as = None
        if os.geteuid() == 0:
            run_as = BROKER_USER
            # The broker reads its key and writes persistence after dropping privileges.
            broker_files.hand_over(layout, BROKER_USER)
            ensure_traversable(layout.directory)
        broker_files.install_ca_files(authority, layout)
        broker_files.render_config(layout, port=self.port, bind_address=self.host, run_as=run_as)
        broker_files.render_acl(
            layout,
            blocked=authority.blocked_identities(),
            service_identities=broker_files.acl_identities(authority),
        )

    def _write_service_identity(self, name: str, folder: Path, *, days: int) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = new_key()
        authority = self.authority
        cert = authority.issue(
            key.public_key(), kind=CertificateKind.SERVICE, common_name=name, days=days
        )
        write_private_key(folder / "service.key", key)
        write_public(folder / "service.crt", pem(cert))
        write_public(folder / "ca-chain.pem", authority.chain_pem)

    def add_service_identity(self, name: str, folder: Path, *, days: int = 2) -> None:
        """Issue another service identity (a backend replica, an observer) into `folder`
        (service.key, service.crt, ca-chain.pem) and grant it on the running broker."""
        self._write_service_identity(name, folder, days=days)
        # The same step a revocation takes: the ACL re-rendered (now granting the new identity).
        broker_files.publish_revocations(self.authority, self.layout)
        self.reload()

    def _log_since_start(self) -> str:
        return self._log_from(self._log_offset)

    def _log_from(self, offset: int) -> str:
        try:
            with (self.state_dir / "mosquitto.log").open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_size(self) -> int:
        try:
            return (self.state_dir / "mosquitto.log").stat().st_size
        except FileNotFoundError:
            return 0

    def _ready(self) -> bool:
        return " running" in self._log_since_start()

    def start(self) -> None:
        """Prepare certificates and configuration, then start the broker."""
        self._prepare()
        log_path = self.state_dir / "mosquitto.log"
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self._process = ManagedProcess(
            "mosquitto",
            [mosquitto_binary(), "-c", str(self.layout.conf)],
            log_path=log_path,
            ready=self._ready,
        )
        self._process.start(timeout=20)
        self.layout.pid_file.write_text(str(self._process.pid))

    def reload(self, *, timeout: float = 10.0) -> None:
        """SIGHUP: re-read the ACL and the CRL without dropping connections. Returns once the
        broker has taken it up (it logs the reload before reading, in the same turn of its
        single-threaded loop, so a connection it accepts later meets the new rules)."""
        if self._process is None:
            return
        # Only what is logged after the signal is read: a long run's log is large.
        offset = self._log_size()
        self._process.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while RELOAD_LINE not in self._log_from(offset):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload within {timeout:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker (it saves its persistence file first)."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        self.layout.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no chance to save its persistence file."""
        if self._process is not None:
            self._process.signal(signal.SIGKILL)
        self.stop()

    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.running()

    def log(self) -> str:
        """Everything the broker logged since it started."""
        return self._log_since_start()

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
