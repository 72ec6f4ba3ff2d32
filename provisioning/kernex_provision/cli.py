"""`kernex-provision`: certificate authority, device identities and broker configuration."""

import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from cryptography import x509

from kernex_protocol.ids import InvalidDeviceId
from kernex_provision import broker as broker_files
from kernex_provision.authority import (
    AuthorityError,
    CertificateAuthority,
    describe,
    pem,
    write_atomic,
    write_private_key,
    write_public,
)
from kernex_provision.certificates import CertificateKind, CsrRejected, check_csr, load_csr, new_key
from kernex_provision.kit import DEFAULT_PRODUCTS, BrokerAddress, write_kit
from kernex_provision.notice_keys import NOTICE_KEY, create_notice_key

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

P = ParamSpec("P")
R = TypeVar("R")

CaDir = Annotated[
    Path, typer.Option("--ca", envvar="KERNEX_CA_DIR", help="the CA directory made by init-ca")
]
PassphraseFile = Annotated[
    Path | None,
    typer.Option(help="file holding the CA key passphrase (or set KERNEX_CA_PASSPHRASE)"),
]
BrokerDir = Annotated[
    Path | None,
    typer.Option(help="broker directory to update (CRL, ACL) and signal to reload"),
]


def _passphrase(path: Path | None) -> bytes | None:
    if path is not None:
        return path.read_bytes().rstrip(b"\r\n")
    value = os.environ.get("KERNEX_CA_PASSPHRASE")
    return value.encode() if value else None


def _friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    @wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (AuthorityError, InvalidDeviceId, CsrRejected, FileNotFoundError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return run


def _ca(ca: Path, passphrase_file: Path | None) -> CertificateAuthority:
    return CertificateAuthority(ca, passphrase=_passphrase(passphrase_file))


CrlUrlOption = typer.Option(
    "--crl-url",
    help="where the CRL is published (the backend serves it at /api/v1/pki/crl), named in "
    "every certificate from now on: for brokers that fetch CRLs (EMQX)",
)


@app.command("init-ca")
@_friendly_errors
def init_ca(
    ca: CaDir,
    organization: Annotated[str, typer.Option(help="O= of every certificate")] = "Kernex",
    root_key_dir: Annotated[
        Path | None, typer.Option(help="write the root key here (removable media) instead")
    ] = None,
    passphrase_file: PassphraseFile = None,
    crl_url: Annotated[str | None, CrlUrlOption] = None,
) -> None:
    """Create a root CA and an issuing CA under it (ECDSA P-256)."""
    authority = CertificateAuthority.initialise(
        ca,
        organization=organization,
        passphrase=_passphrase(passphrase_file),
        root_key_dir=root_key_dir,
        crl_url=crl_url,
    )
    typer.echo(f"CA created in {authority.directory}")
    typer.echo(f"  issuing CA: {describe(authority.issuing_certificate)}")
    typer.echo("  keep root-ca.key offline: only re-issuing the issuing CA needs it")


@app.command("issue-server")
@_friendly_errors
def issue_server(
    ca: CaDir,
    out: Annotated[Path, typer.Option(help="the broker directory (server.crt, server.key)")],
    dns: Annotated[list[str] | None, typer.Option(help="DNS name; repeat for several")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="IP address; repeat for several")] = None,
    days: int = 825,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Issue the broker's server certificate."""
    authority = _ca(ca, passphrase_file)
    names = dns or []
    key = new_key()
    certificate = authority.issue(
        key.public_key(),
        kind=CertificateKind.SERVER,
        common_name=(names or ip or ["broker"])[0],
        days=days,
        dns_names=names,
        ip_addresses=ip or [],
    )
    layout = broker_files.BrokerLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    write_private_key(layout.server_key, key)
    write_public(layout.server_cert, pem(certificate))
    typer.echo(f"server certificate: {describe(certificate)} -> {out}")


@app.command("issue-service")
@_friendly_errors
def issue_service(
    ca: CaDir,
    out: Annotated[Path, typer.Option(help="directory for service.crt, service.key, ca-chain.pem")],
    name: Annotated[str, typer.Argument(help="the identity (MQTT username)")] = "kernex-backend",
    days: int = 825,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Issue the backend's MQTT client certificate."""
    authority = _ca(ca, passphrase_file)
    key = new_key()
    certificate = authority.issue(
        key.public_key(), kind=CertificateKind.SERVICE, common_name=name, days=days
    )
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_key(out / "service.key", key)
    write_public(out / "service.crt", pem(certificate))
    write_public(out / "ca-chain.pem", authority.chain_pem)
    typer.echo(f"service certificate: {describe(certificate)} -> {out}")


@app.command("notice-key")
@_friendly_errors
def notice_key(
    ca: CaDir,
    out: Annotated[Path, typer.Option(help="directory for notice.key (the backend's) and .pub")],
    name: Annotated[str, typer.Option(help="file name of the public part in kits")] = "notice",
) -> None:
    """Make the backend's notice-signing key; kits made from now on trust it."""
    kid = create_notice_key(ca, out, name=name)
    typer.echo(
        f"notice key {kid} -> {out / NOTICE_KEY} (set KERNEX_NOTICE__KEY_FILE to it); "
        f"public part in {ca / 'notice-keys' / (name + '.pub')}"
    )


@app.command("issue-device")
@_friendly_errors
def issue_device(
    ca: CaDir,
    device_id: Annotated[str, typer.Argument(help="A-Z a-z 0-9 . _ - ; 1-64 characters")],
    out: Annotated[Path, typer.Option(help="directory for the device kit")],
    device_type: Annotated[
        str, typer.Option(help="hardware/product type; releases for other types are refused")
    ],
    csr: Annotated[
        Path | None, typer.Option(help="sign this CSR (the key stays on the device)")
    ] = None,
    product: Annotated[
        list[str] | None,
        typer.Option(help="release name the device runs (repeat for several); default: app"),
    ] = None,
    days: int = 365,
    broker_host: str = "localhost",
    broker_port: int = 8883,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Issue a device certificate and write its kit (certificate, key, CA chain, agent config)."""
    authority = _ca(ca, passphrase_file)
    key = None
    if csr is not None:
        public_key = check_csr(load_csr(csr.read_bytes()), device_id)
    else:
        key = new_key()
        public_key = key.public_key()
    certificate = authority.issue(
        public_key, kind=CertificateKind.DEVICE, common_name=device_id, days=days
    )
    write_kit(
        out,
        authority,
        device_id=device_id,
        device_type=device_type,
        certificate=certificate,
        key=key,
        broker=BrokerAddress(broker_host, broker_port),
        products=tuple(product) if product else DEFAULT_PRODUCTS,
    )
    typer.echo(f"device certificate: {describe(certificate)} -> kit in {out}")


def _publish(authority: CertificateAuthority, broker_dir: Path | None) -> None:
    if broker_dir is None:
        typer.echo("copy crl.pem to the broker and re-render its ACL, then send it SIGHUP")
        return
    layout = broker_files.BrokerLayout(broker_dir)
    broker_files.publish_revocations(authority, layout)
    if broker_files.reload_broker(layout):
        typer.echo(f"broker in {broker_dir} reloaded")
    else:
        typer.echo(f"no running broker recorded in {layout.pid_file}: send it SIGHUP yourself")


@app.command()
@_friendly_errors
def revoke(
    ca: CaDir,
    device_id: Annotated[
        str | None, typer.Argument(help="revoke every live certificate of this ID")
    ] = None,
    serial: Annotated[str | None, typer.Option(help="revoke one certificate by hex serial")] = None,
    reason: str = "unspecified",
    broker_dir: BrokerDir = None,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Revoke certificates, re-issue the CRL and (with --broker-dir) cut the device off."""
    if (device_id is None) == (serial is None):
        raise ValueError("give a DEVICE_ID or --serial, not both")
    authority = _ca(ca, passphrase_file)
    for row in authority.revoke(common_name=device_id, serial=serial, reason=reason):
        typer.echo(f"revoked {row.common_name} serial={row.serial}")
    _publish(authority, broker_dir)


@app.command()
@_friendly_errors
def crl(
    ca: CaDir,
    days: Annotated[int, typer.Option(help="validity of the new CRL")] = 7,
    broker_dir: BrokerDir = None,
    passphrase_file: PassphraseFile = None,
    url: Annotated[str | None, CrlUrlOption] = None,
    no_url: Annotated[bool, typer.Option("--no-url", help="stop naming a CRL URL")] = False,
) -> None:
    """Re-issue the CRL with a fresh nextUpdate (and set or drop its distribution URL).

    Run it daily: when the CRL expires, the broker refuses every device.
    """
    authority = _ca(ca, passphrase_file)
    if url is not None or no_url:
        authority.set_crl_url(None if no_url else url, crl_valid_days=days)
        typer.echo(f"CRL distribution URL: {authority.crl_url or 'none'}")
    issued = authority.write_crl(valid_days=days)
    number = issued.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    typer.echo(f"CRL #{number} valid until {issued.next_update_utc}")
    _publish(authority, broker_dir)


@app.command("list")
@_friendly_errors
def list_certificates(ca: CaDir) -> None:
    """List every certificate issued, with its state."""
    for row in CertificateAuthority(ca).certificates():
        state = f"revoked {row.revoked_at}" if row.revoked_at else "valid"
        typer.echo(
            f"{row.kind:8} {row.common_name:40} {row.serial:>40} until {row.not_after}  {state}"
        )


@app.command("broker-config")
@_friendly_errors
def broker_config(
    ca: CaDir,
    out: Annotated[Path, typer.Option(help="the broker directory (holds server.crt/.key)")],
    port: int = 8883,
    bind: str = "0.0.0.0",  # noqa: S104 - devices reach the broker over the network
    run_as: Annotated[str | None, typer.Option(help="user Mosquitto drops privileges to")] = None,
    service_identity: str = broker_files.DEFAULT_SERVICE_IDENTITY,
    templates: Annotated[
        Path, typer.Option(help="the broker-config folder")
    ] = broker_files.TEMPLATES_DIR,
    broker: Annotated[
        str, typer.Option(help="mosquitto (one node) or emqx (the clustered path)")
    ] = "mosquitto",
) -> None:
    """Render the broker configuration and the ACL, and install the CA chain and CRL, into
    --out: mosquitto.conf and acl, or (--broker emqx) emqx.conf and acl.conf."""
    authority = CertificateAuthority(ca)
    layout = broker_files.BrokerLayout(out.resolve())  # Mosquitto resolves paths from its cwd
    if not layout.server_cert.exists() or not layout.server_key.exists():
        raise ValueError(
            f"no server certificate in {out}: run `kernex-provision issue-server --out {out}` first"
        )
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    broker_files.install_ca_files(authority, layout)
    if broker == "emqx":
        from kernex_provision.emqx import render_emqx

        conf, _ = render_emqx(
            layout,
            port=port,
            bind_address=bind,
            blocked=authority.blocked_identities(),
            service_identities=broker_files.acl_identities(authority, service_identity),
            crl_check=authority.crl_url is not None,
            templates_dir=templates,
        )
        typer.echo(f"EMQX configuration written to {conf} (see docs/security.md, EMQX)")
        return
    if broker != "mosquitto":
        raise ValueError("--broker is mosquitto or emqx")
    broker_files.render_config(
        layout, port=port, bind_address=bind, run_as=run_as, templates_dir=templates
    )
    broker_files.render_acl(
        layout,
        blocked=authority.blocked_identities(),
        service_identities=broker_files.acl_identities(authority, service_identity),
        templates_dir=templates,
    )
    if run_as:
        broker_files.hand_over(layout, run_as)
    typer.echo(f"broker configuration written to {layout.conf}")
    typer.echo(f"start it with: mosquitto -c {layout.conf}")


@app.command()
@_friendly_errors
def enrol(
    device_id: Annotated[str, typer.Argument(help="A-Z a-z 0-9 . _ - ; 1-64 characters")],
    api: Annotated[str, typer.Option(help="the backend's API root, e.g. https://host/api/v1")],
    device_type: Annotated[str, typer.Option(help="registers the device with this type")],
    out: Annotated[Path, typer.Option(help="directory for the device kit")],
    token_file: Annotated[Path, typer.Option(help="file holding an API key with the write scope")],
    broker_host: str = "localhost",
    broker_port: int = 8883,
    name: str | None = None,
    release_keys: Annotated[
        Path | None, typer.Option(help="folder of trusted release *.pub keys for the kit")
    ] = None,
    notice_keys: Annotated[
        Path | None, typer.Option(help="folder of the backend's notice *.pub keys for the kit")
    ] = None,
    api_ca_file: Annotated[
        Path | None, typer.Option(help="CA bundle to verify an HTTPS API with")
    ] = None,
) -> None:
    """Enrol a device through the API: the key is made here, the backend signs and registers."""
    from kernex_provision.enrol import Enrolment, EnrolmentError, enrol

    token = token_file.read_text().strip()
    request = Enrolment(
        api_url=api,
        token=token,
        device_id=device_id,
        device_type=device_type,
        out=out,
        broker=BrokerAddress(broker_host, broker_port),
        name=name,
        release_keys=release_keys,
        notice_keys=notice_keys,
        ca_file=api_ca_file,
    )
    try:
        serial = enrol(request)
    except EnrolmentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if serial:
        typer.echo(f"{device_id} enrolled (certificate serial {serial}) -> kit in {out}")
    else:
        typer.echo(f"{device_id}: the kit in {out} is complete already; nothing done")


PassphraseFileRequired = Annotated[
    Path, typer.Option(help="file holding the backup passphrase (12 characters or more)")
]


@app.command("backup-ca")
@_friendly_errors
def backup_ca(ca: CaDir, out: Path, passphrase_file: PassphraseFileRequired) -> None:
    """Write an encrypted backup of the CA directory (keys, index, CRL) to --out."""
    from kernex_provision.ca_backup import CaBackupError, seal

    try:
        blob = seal(ca, passphrase_file.read_bytes().rstrip(b"\r\n"))
    except CaBackupError as exc:
        raise ValueError(str(exc)) from None
    write_atomic(out, blob, 0o600)
    typer.echo(f"CA backup written: {out} ({len(blob)} bytes, AES-256-GCM)")


@app.command("restore-ca")
@_friendly_errors
def restore_ca(
    backup: Annotated[Path, typer.Argument(help="a file from backup-ca")],
    ca: CaDir,
    passphrase_file: PassphraseFileRequired,
) -> None:
    """Restore a CA backup into --ca (a new or empty directory)."""
    from kernex_provision.ca_backup import CaBackupError, unseal

    try:
        names = unseal(backup.read_bytes(), passphrase_file.read_bytes().rstrip(b"\r\n"), ca)
    except CaBackupError as exc:
        raise ValueError(str(exc)) from None
    typer.echo(f"CA restored into {ca}: {len(names)} entries")


@app.command("broker-run")
@_friendly_errors
def broker_run(
    broker_dir: Annotated[Path, typer.Option(help="the broker directory (mosquitto.conf)")],
    mosquitto: Annotated[str, typer.Option(help="the Mosquitto executable")] = "mosquitto",
) -> None:
    """Run Mosquitto and reload it within a second of a CRL or ACL change (the broker side of
    revocation when the backend runs elsewhere: another container or pod)."""
    from kernex_provision.broker_runner import main_loop

    raise typer.Exit(main_loop(broker_files.BrokerLayout(broker_dir.resolve()), mosquitto))


@app.command("emqx-sync")
@_friendly_errors
def emqx_sync(
    broker_dir: Annotated[Path, typer.Option(help="the broker directory (acl.conf for EMQX)")],
    api: Annotated[str, typer.Option(help="EMQX's management API, e.g. http://emqx:18083")],
    api_key_file: Annotated[
        Path, typer.Option(help="file holding the EMQX API key and secret as KEY:SECRET")
    ],
) -> None:
    """Keep EMQX in step with the rendered ACL: push its rules and kick every newly revoked or
    quarantined device within a second of the backend writing them (the EMQX side of revocation)."""
    import signal
    import threading

    from kernex_provision.emqx_sync import EmqxApi, EmqxSync

    key, sep, secret = api_key_file.read_text().strip().partition(":")
    if not sep or not key or not secret:
        raise ValueError(f"{api_key_file} must hold KEY:SECRET")
    acl = broker_dir.resolve() / "acl.conf"
    if not acl.is_file():
        raise ValueError(f"no acl.conf in {broker_dir}: run `broker-config --broker emqx` first")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sync = EmqxSync(acl, EmqxApi(api, key, secret), say=lambda m: typer.echo(m, err=True))
    sync.run(should_stop=stop.is_set)


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
