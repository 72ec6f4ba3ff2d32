"""Encrypted backups of a CA directory. Losing the CA means re-provisioning every device, and a
copy of its keys in the clear is as bad as losing them, so the archive is encrypted with a
passphrase: scrypt (n=2^17, r=8, p=1) derives an AES-256-GCM key; the header is authenticated.

Format: b"KXCA1" | salt (16) | nonce (12) | AES-GCM(tar.gz of the directory).
"""

import io
import os
import tarfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"KXCA1"
_SALT, _NONCE = 16, 12
MIN_PASSPHRASE = 12


class CaBackupError(Exception):
    """A backup that cannot be made or opened; the message says why."""


def _key(passphrase: bytes, salt: bytes) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise CaBackupError(f"the passphrase needs at least {MIN_PASSPHRASE} characters")
    return Scrypt(salt=salt, length=32, n=2**17, r=8, p=1).derive(passphrase)


def seal(ca_dir: Path, passphrase: bytes) -> bytes:
    """The encrypted archive of `ca_dir` (every file, modes kept; the lock file left out)."""
    if not (ca_dir / "issuing-ca.key").is_file():
        raise CaBackupError(f"{ca_dir} is not a CA directory (no issuing-ca.key)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(ca_dir.rglob("*")):
            if path.name != ".lock":
                tar.add(path, arcname=str(path.relative_to(ca_dir)), recursive=False)
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    header = MAGIC + salt + nonce
    return header + AESGCM(_key(passphrase, salt)).encrypt(nonce, buffer.getvalue(), header)


def unseal(blob: bytes, passphrase: bytes, into: Path) -> list[str]:
    """Decrypt and unpack into `into`, which must not exist or be empty; returns the names.

    Nothing is written unless the passphrase and the whole archive check out."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _SALT + _NONCE + 16:
        raise CaBackupError("not a Kernex CA backup")
    salt = blob[len(MAGIC) : len(MAGIC) + _SALT]
    nonce = blob[len(MAGIC) + _SALT : len(MAGIC) + _SALT + _NONCE]
    header = blob[: len(MAGIC) + _SALT + _NONCE]
    try:
        archive = AESGCM(_key(passphrase, salt)).decrypt(nonce, blob[len(header) :], header)
    except InvalidTag:
        raise CaBackupError("wrong passphrase, or the backup is damaged") from None
    if into.exists() and any(into.iterdir()):
        raise CaBackupError(f"{into} is not empty: restore into a new directory")
    into.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")  # no links out, no absolute paths, no devices
        return tar.getnames()
