"""`kernex-release`: offline release keys and signed release manifests.

Run it on the release team's machine, not on the backend: the backend only ever sees public
keys and signatures.
"""

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_protocol.manifest import (
    ManifestInvalid,
    ReleaseManifest,
    RollbackApproval,
    SignatureInvalid,
    SignedRelease,
    key_id,
    load_trusted_keys,
    sign,
    sign_rollback,
    verify,
)
from kernex_provision.authority import write_atomic, write_public

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
_CHUNK = 1024 * 1024


def digest_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def save_key_pair(key: Ed25519PrivateKey, *, private_path: Path, public_dir: Path) -> Path:
    """Write a release key pair: the private key 0600, the public key as release-<id>.pub in
    `public_dir`. Returns the public key's path."""
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_dir.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(private_path, private, 0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = public_dir / f"release-{key_id(key.public_key())}.pub"
    write_public(public_path, public)
    return public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a release private key; ValueError unless it is an Ed25519 PEM key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("release keys must be Ed25519 (made by kernex-release keygen)")
    return key


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="directory for release-<id>.key and release-<id>.pub")],
) -> None:
    """Create an Ed25519 release key pair. Keep the .key offline; distribute the .pub."""
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    save_key_pair(key, private_path=out / f"release-{kid}.key", public_dir=out)
    typer.echo(f"release key {kid}: {out / f'release-{kid}.key'} (secret), .pub (public)")


@app.command("sign")
def sign_command(
    file: Annotated[Path, typer.Argument(help="the bundle to release")],
    key: Annotated[Path, typer.Option(help="the release private key")],
    name: Annotated[str, typer.Option()],
    version: Annotated[str, typer.Option(help="semantic version, e.g. 1.4.2")],
    device_type: Annotated[str, typer.Option()],
    out: Annotated[Path | None, typer.Option(help="default: FILE.release.json")] = None,
) -> None:
    """Write a signed release manifest for FILE."""
    sha256, size = digest_file(file)
    try:
        manifest = ReleaseManifest(
            name=name,
            version=version,
            device_type=device_type,
            sha256=sha256,
            size=size,
            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        )
    except ManifestInvalid as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    signed = sign(manifest, _load_private_key(key))
    target = out or file.with_name(file.name + ".release.json")
    write_public(target, signed.to_json().encode())
    typer.echo(
        f"{name} {version} ({size} bytes, sha256 {sha256[:12]}...) "
        f"signed by {signed.key_id} -> {target}"
    )


@app.command("verify")
def verify_command(
    release: Annotated[Path, typer.Argument(help="the .release.json file")],
    keys: Annotated[Path, typer.Option(help="directory of trusted *.pub release keys")],
    file: Annotated[
        Path | None, typer.Option(help="also check this file's digest and size")
    ] = None,
) -> None:
    """Verify a signed release (and optionally the file it describes)."""
    try:
        signed = SignedRelease.from_json(release.read_bytes())
        kid = verify(signed, load_trusted_keys(keys))
    except (ManifestInvalid, SignatureInvalid) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if file is not None and digest_file(file) != (signed.manifest.sha256, signed.manifest.size):
        typer.echo("error: the file does not match the manifest's sha256 and size", err=True)
        raise typer.Exit(1)
    typer.echo(f"valid: {signed.manifest.name} {signed.manifest.version}, signed by {kid}")


@app.command("approve-rollback")
def approve_rollback_command(
    release: Annotated[Path, typer.Argument(help="the .release.json of the version to return to")],
    key: Annotated[Path, typer.Option(help="the release private key")],
    from_version: Annotated[
        str, typer.Option(help="the version devices run now, that this approval rolls back from")
    ],
    valid_days: Annotated[
        float, typer.Option(min=0.01, max=90, help="how long devices accept the approval")
    ] = 7.0,
    out: Annotated[Path | None, typer.Option(help="default: RELEASE with .rollback.json")] = None,
) -> None:
    """Sign the permission for devices running FROM_VERSION to install this (older) release,
    valid for VALID_DAYS."""
    try:
        signed = SignedRelease.from_json(release.read_bytes())
        approval = RollbackApproval.for_manifest(
            signed.manifest,
            from_version=from_version,
            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
            valid_for=dt.timedelta(days=valid_days),
        )
    except ManifestInvalid as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    approved = sign_rollback(approval, _load_private_key(key))
    target = out or release.with_name(release.name.removesuffix(".release.json") + ".rollback.json")
    write_public(target, json.dumps(approved.to_document(), sort_keys=True).encode())
    typer.echo(
        f"rollback from {approval.from_version} to {approval.name} {approval.version} approved "
        f"by {approved.key_id} until {approval.expires_at} -> {target}"
    )


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    main()
