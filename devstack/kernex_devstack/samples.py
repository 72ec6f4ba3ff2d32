"""Sample material for the demo: a release key and a small installable bundle."""

import io
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_provision.release import load_private_key, save_key_pair

HELLO_SCRIPT = b"""#!/bin/sh
# A sample application installed by Kernex.
echo "hello from hello-app $(cat "$(dirname "$0")/VERSION")"
"""


def load_or_create_release_key(directory: Path) -> Ed25519PrivateKey:
    """The demo's release key (a real deployment keeps it offline, see docs/security.md)."""
    private_path = directory / "release.key"
    if private_path.exists():
        return load_private_key(private_path)
    key = Ed25519PrivateKey.generate()
    save_key_pair(key, private_path=private_path, public_dir=directory / "public")
    return key


def sample_bundle_bytes(version: str = "1.0.0") -> bytes:
    """A tar.gz holding a hello script and its version, with fixed metadata (reproducible)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, data, mode in (
            ("bin/hello", HELLO_SCRIPT, 0o755),
            ("VERSION", version.encode() + b"\n", 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
