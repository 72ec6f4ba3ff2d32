"""The backend's notice key: the online key that signs deployment notices.

Release keys stay offline and say *what* may be installed; the notice key lives with the backend
and says *which device* should install *which release* for *which deployment*, *until when*.
Devices trust the public parts in their kit's `notice-keys/` (copied from the CA directory's
`notice-keys/`, like release keys). To rotate: make a new key, let kits and devices carry both
public parts, switch the backend to the new key, then remove the old public part.
"""

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_protocol.ids import validate_device_id
from kernex_protocol.manifest import key_id
from kernex_provision.authority import NOTICE_KEYS, write_atomic, write_public

NOTICE_KEY = "notice.key"
NOTICE_PUBLIC = "notice.pub"


def create_notice_key(ca_dir: Path, out: Path, *, name: str = "notice") -> str:
    """Make a notice key: private part to `out/notice.key` (0600, for the backend), public part
    to `out/notice.pub` and to the CA's `notice-keys/<name>.pub` (for every kit made after).
    Returns the key id."""
    validate_device_id(name)  # a file name: the same safe characters
    key = Ed25519PrivateKey.generate()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(out / NOTICE_KEY, private, 0o600)
    write_public(out / NOTICE_PUBLIC, public)
    (ca_dir / NOTICE_KEYS).mkdir(exist_ok=True)
    write_public(ca_dir / NOTICE_KEYS / f"{name}.pub", public)
    return key_id(key.public_key())
