"""Checking a downloaded bundle against its signed manifest before anything is unpacked."""

import hashlib
import hmac
from pathlib import Path

from kernex_protocol.manifest import ReleaseManifest
from kernex_protocol.payloads import ErrorCode

_CHUNK = 1024 * 1024


class BundleMismatch(Exception):
    """The file is not the signed artefact."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def verify_bundle(path: Path, manifest: ReleaseManifest) -> None:
    """Raise BundleMismatch unless `path` has the manifest's exact size and sha256."""
    actual_size = path.stat().st_size
    if actual_size != manifest.size:
        raise BundleMismatch(
            ErrorCode.SIZE_MISMATCH, f"{actual_size} bytes on disk, {manifest.size} signed"
        )
    digest = hashlib.sha256()
    with path.open("rb") as bundle:
        while chunk := bundle.read(_CHUNK):
            digest.update(chunk)
    if not hmac.compare_digest(digest.hexdigest(), manifest.sha256):
        raise BundleMismatch(ErrorCode.DIGEST_MISMATCH, "the sha256 differs from the signed one")
