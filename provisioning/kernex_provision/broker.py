"""Rendering the Mosquitto configuration and ACL from broker-config/ templates."""

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from kernex_protocol.ids import validate_device_id
from kernex_protocol.limits import BROKER_MAX_PAYLOAD_BYTES
from kernex_provision.authority import CHAIN, CRL, CertificateAuthority, write_public

# The repository's broker-config/ folder; installed images point KERNEX_BROKER_TEMPLATES_DIR at
# their copy of it.
TEMPLATES_DIR = Path(
    os.environ.get(
        "KERNEX_BROKER_TEMPLATES_DIR", Path(__file__).resolve().parents[2] / "broker-config"
    )
)
CONF_TEMPLATE = "mosquitto.conf.template"
ACL_TEMPLATE = "acl.template"
DEFAULT_SERVICE_IDENTITY = "kernex-backend"
# Fixed header (5) + topic (2 + ~60) + MQTT 5 properties: 1 KiB is ample room.
MAX_PACKET_SIZE = BROKER_MAX_PAYLOAD_BYTES + 1024


@dataclass(frozen=True, slots=True)
class BrokerLayout:
    """Where the rendered broker files live."""

    directory: Path

    @property
    def conf(self) -> Path:
        """mosquitto.conf."""
        return self.directory / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        """The ACL file."""
        return self.directory / "acl"

    @property
    def ca_chain(self) -> Path:
        """Trusted CAs (copied from the CA directory)."""
        return self.directory / "ca-chain.pem"

    @property
    def crl(self) -> Path:
        """The CRL (copied from the CA directory on every revocation)."""
        return self.directory / "crl.pem"

    @property
    def server_cert(self) -> Path:
        """The broker's certificate."""
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        """The broker's private key."""
        return self.directory / "server.key"

    @property
    def data_dir(self) -> Path:
        """Persistence."""
        return self.directory / "data"

    @property
    def pid_file(self) -> Path:
        """Where whoever starts the broker records its PID, for reload signals."""
        return self.directory / "mosquitto.pid"


def load_template(templates_dir: Path, name: str) -> Template:
    """A broker template; a clear error when the folder lacks it."""
    path = templates_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"template {path} not found; pass the broker-config folder")
    return Template(path.read_text())


def render_acl(
    layout: BrokerLayout,
    *,
    blocked: list[str],
    service_identities: list[str] | None = None,
    templates_dir: Path = TEMPLATES_DIR,
) -> None:
    """Write the ACL: the service identities (default: `kernex-backend`) may use every device
    topic; `blocked` device identities are denied everything."""
    services = sorted(set(service_identities or [DEFAULT_SERVICE_IDENTITY]))
    grants = "".join(
        f"user {validate_device_id(name)}\ntopic readwrite kernex/v1/devices/#\n\n"
        for name in services
    )
    blocks = "".join(f"user {validate_device_id(name)}\ntopic deny #\n\n" for name in blocked)
    text = load_template(templates_dir, ACL_TEMPLATE).substitute(
        service_identities=grants, blocked_identities=blocks
    )
    write_public(layout.acl, text.encode())


def acl_identities(authority: CertificateAuthority, extra_service: str | None = None) -> list[str]:
    """The service identities the ACL grants: those the CA issued, plus `extra_service`."""
    names = set(authority.service_identities())
    if extra_service:
        names.add(extra_service)
    return sorted(names) or [DEFAULT_SERVICE_IDENTITY]


def publish_revocations(
    authority: CertificateAuthority,
    layout: BrokerLayout,
    *,
    held: Iterable[str] | None = None,
    crl_valid_days: int = 7,
) -> None:
    """Copy the current CRL and re-render the ACL's blocked identities into the broker dir: the
    revoked devices and those on hold. `held` (devices quarantined for a while, still
    certified) replaces the identities on hold first; None keeps them as they are."""
    if held is not None:
        authority.set_held(held, crl_valid_days=crl_valid_days)
    write_public(layout.crl, (authority.directory / CRL).read_bytes())
    blocked = sorted(set(authority.blocked_identities()) | set(authority.held_identities()))
    render_acl(layout, blocked=blocked, service_identities=acl_identities(authority))
    if (layout.directory / "emqx.conf").exists():
        # Rendered for EMQX: its ACL too, which `kernex-provision emqx-sync` pushes to EMQX.
        from kernex_provision.emqx import render_emqx_acl  # emqx.py builds on this module

        render_emqx_acl(layout, blocked=blocked, service_identities=acl_identities(authority))


def render_config(
    layout: BrokerLayout,
    *,
    port: int,
    bind_address: str = "0.0.0.0",  # noqa: S104 - a broker serves devices on the network
    run_as: str | None = None,
    log_dest: str = "stderr",
    templates_dir: Path = TEMPLATES_DIR,
) -> None:
    """Write mosquitto.conf for this layout."""
    text = load_template(templates_dir, CONF_TEMPLATE).substitute(
        user_line=f"user {run_as}" if run_as else "",
        port=port,
        bind_address=bind_address,
        ca_chain=layout.ca_chain,
        server_cert=layout.server_cert,
        server_key=layout.server_key,
        crl=layout.crl,
        acl_file=layout.acl,
        data_dir=layout.data_dir,
        max_packet_size=MAX_PACKET_SIZE,
        log_dest=log_dest,
    )
    write_public(layout.conf, text.encode())


def hand_over(layout: BrokerLayout, user: str) -> None:
    """Give `user` (the one Mosquitto drops privileges to) its key and persistence directory."""
    import pwd

    if os.geteuid() != 0:
        return  # only root can chown; a non-root broker runs as its starter anyway
    account = pwd.getpwnam(user)
    for path in (layout.server_key, layout.data_dir, *layout.data_dir.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)


def install_ca_files(authority: CertificateAuthority, layout: BrokerLayout) -> None:
    """Copy the trust chain and CRL from the CA directory into the broker directory."""
    write_public(layout.ca_chain, (authority.directory / CHAIN).read_bytes())
    write_public(layout.crl, (authority.directory / CRL).read_bytes())


def reload_broker(layout: BrokerLayout) -> bool:
    """Ask the broker to re-read its ACL and CRL (SIGHUP). False if no broker PID is known."""
    try:
        pid = int(layout.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True
