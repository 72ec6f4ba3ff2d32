"""Release manifests: what the release team signs offline, and what devices verify.

A manifest names one artefact (name, semantic version, device type) and pins its content
(sha256, size). The release key signs the manifest's canonical JSON with Ed25519; the signed
form carries the signature and the id of the key that made it. The backend never holds a release
private key, so a compromised backend cannot make devices install anything unsigned.
"""

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

# cryptography is imported where a key is used, not here: an idle device agent, which imports
# this module, then never loads it (its bindings are about a third of the agent's memory).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

from kernex_protocol.canonical import canonical_json
from kernex_protocol.ids import DEVICE_ID_PATTERN

MANIFEST_VERSION: Final = 1
# Version 2 names the version rolled back from and expires (version 1 approvals did neither).
ROLLBACK_VERSION: Final = 2
MAX_SIGNED_RELEASE_BYTES: Final = 8 * 1024
# Semantic Versioning 2.0.0, from semver.org.
SEMVER_PATTERN: Final = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SEMVER_RE: Final = re.compile(SEMVER_PATTERN)
_NAME_RE: Final = re.compile(DEVICE_ID_PATTERN)
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")


class ManifestInvalid(ValueError):
    """A manifest or signed release is malformed; the message says which field."""


class SignatureInvalid(ValueError):
    """The signature does not verify, or no trusted key has its key id."""


def key_id(public_key: "Ed25519PublicKey") -> str:
    """A short, stable id for a release public key: the first 16 hex of SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization  # lazily: see the imports

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_semver(version: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key for a semantic version (pre-releases sort before the release)."""
    match = _SEMVER_RE.match(version)
    if match is None:
        raise ManifestInvalid(f"version {version!r} is not a semantic version (like 1.4.2)")
    major, minor, patch, pre = int(match[1]), int(match[2]), int(match[3]), match[4]
    if pre is None:
        return major, minor, patch, ((2, 0),)  # a release outranks every pre-release
    parts: list[tuple[int, int | str]] = []
    for item in pre.split("."):
        parts.append((0, int(item)) if item.isdigit() else (1, item))
    return major, minor, patch, tuple(parts)


@dataclass(frozen=True, slots=True)
class ReleaseManifest:
    """The signed facts about one release artefact."""

    name: str
    version: str
    device_type: str
    sha256: str
    size: int
    created_at: str  # ISO 8601 UTC

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ManifestInvalid("name must be 1-64 characters from A-Z a-z 0-9 . _ -")
        parse_semver(self.version)
        if len(self.version) > 64:
            raise ManifestInvalid("version is longer than 64 characters")
        if not _NAME_RE.match(self.device_type):
            raise ManifestInvalid("device_type must be 1-64 characters from A-Z a-z 0-9 . _ -")
        if not _SHA256_RE.match(self.sha256):
            raise ManifestInvalid("sha256 must be 64 lowercase hex digits")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ManifestInvalid("size must be a non-negative integer")
        try:
            created = dt.datetime.fromisoformat(self.created_at)
        except ValueError:
            raise ManifestInvalid("created_at must be an ISO 8601 timestamp") from None
        if created.tzinfo is None:
            raise ManifestInvalid("created_at must carry a time zone")

    @classmethod
    def for_bytes(
        cls, name: str, version: str, device_type: str, content: bytes
    ) -> "ReleaseManifest":
        """A manifest pinning `content` (its sha256 and size), created now."""
        return cls(
            name=name,
            version=version,
            device_type=device_type,
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

    def document(self) -> dict[str, Any]:
        """The manifest as a JSON object (with its schema version)."""
        return {
            "v": MANIFEST_VERSION,
            "name": self.name,
            "version": self.version,
            "device_type": self.device_type,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": self.created_at,
        }

    def canonical(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_json(self.document())

    @classmethod
    def from_document(cls, document: object) -> "ReleaseManifest":
        """Parse and validate a manifest object."""
        if not isinstance(document, dict):
            raise ManifestInvalid("the manifest must be a JSON object")
        if document.get("v") != MANIFEST_VERSION:
            raise ManifestInvalid(f"unsupported manifest version {document.get('v')!r}")
        expected = {"v", "name", "version", "device_type", "sha256", "size", "created_at"}
        if set(document) != expected:
            extra, missing = set(document) - expected, expected - set(document)
            raise ManifestInvalid(
                f"manifest fields differ: missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        for field in ("name", "version", "device_type", "sha256", "created_at"):
            if not isinstance(document[field], str):
                raise ManifestInvalid(f"{field} must be a string")
        return cls(
            name=document["name"],
            version=document["version"],
            device_type=document["device_type"],
            sha256=document["sha256"],
            size=document["size"],
            created_at=document["created_at"],
        )


@dataclass(frozen=True, slots=True)
class SignedRelease:
    """A manifest with its detached signature; unsigned when signature is None."""

    manifest: ReleaseManifest
    signature: str | None = None  # base64 Ed25519 signature over manifest.canonical()
    key_id: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The JSON object form (as carried in a notice)."""
        out: dict[str, Any] = {"manifest": self.manifest.document()}
        if self.signature is not None:
            out["signature"] = self.signature
            out["key_id"] = self.key_id
        return out

    def to_json(self) -> str:
        """The file/header form."""
        return json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes) -> "SignedRelease":
        """Parse the file/header form."""
        if len(data) > MAX_SIGNED_RELEASE_BYTES:
            raise ManifestInvalid(f"a signed release is at most {MAX_SIGNED_RELEASE_BYTES} bytes")
        try:
            document = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ManifestInvalid("the signed release is not valid JSON") from None
        if not isinstance(document, dict) or set(document) - {"manifest", "signature", "key_id"}:
            raise ManifestInvalid("a signed release has only manifest, signature and key_id")
        signature, kid = document.get("signature"), document.get("key_id")
        if (signature is None) != (kid is None):
            raise ManifestInvalid("signature and key_id go together")
        if signature is not None and not (isinstance(signature, str) and isinstance(kid, str)):
            raise ManifestInvalid("signature and key_id must be strings")
        return cls(ReleaseManifest.from_document(document.get("manifest")), signature, kid)


def sign(manifest: ReleaseManifest, private_key: "Ed25519PrivateKey") -> SignedRelease:
    """Sign a manifest (done offline by the release team)."""
    signature = private_key.sign(manifest.canonical())
    return SignedRelease(
        manifest, base64.b64encode(signature).decode(), key_id(private_key.public_key())
    )


class UnknownKey(SignatureInvalid):
    """The document was signed by a key that is not among the trusted ones."""


def verify_detached(
    what: str,
    signature: str | None,
    kid: str | None,
    message: bytes,
    trusted: dict[str, "Ed25519PublicKey"],
) -> str:
    """Check a base64 Ed25519 `signature` over `message` by the trusted key `kid`; returns the
    key id. UnknownKey or SignatureInvalid name `what` was signed."""
    from cryptography.exceptions import InvalidSignature  # lazily: see the imports

    if signature is None or kid is None:
        raise SignatureInvalid(f"the {what} is not signed")
    public_key = trusted.get(kid)
    if public_key is None:
        raise UnknownKey(f"the {what} was signed by an unknown key ({kid[:16]})")
    try:
        public_key.verify(base64.b64decode(signature, validate=True), message)
    except (binascii.Error, ValueError, InvalidSignature):
        raise SignatureInvalid(f"the {what} signature does not verify") from None
    return kid


def verify(release: SignedRelease, trusted: dict[str, "Ed25519PublicKey"]) -> str:
    """Check the signature against the trusted keys; returns the key id that verified it."""
    return verify_detached(
        "release", release.signature, release.key_id, release.manifest.canonical(), trusted
    )


@dataclass(frozen=True, slots=True)
class RollbackApproval:
    """The release team's signed permission to install one release over a newer version.

    Devices refuse a version lower than the one they run, and a release older than their
    configured age, unless the notice carries an approval for exactly that artefact (name,
    device type, version and sha256), from exactly the version they run (`from_version`), that
    has not expired. So a compromised backend cannot push a fleet back to an old, vulnerable
    release, and an approval cannot be replayed later or from another version.
    """

    name: str
    device_type: str
    version: str
    sha256: str
    created_at: str
    from_version: str
    expires_at: str

    def __post_init__(self) -> None:
        # The same field rules as a manifest's.
        ReleaseManifest(self.name, self.version, self.device_type, self.sha256, 0, self.created_at)
        parse_semver(self.from_version)
        if len(self.from_version) > 64:
            raise ManifestInvalid("from_version is longer than 64 characters")
        try:
            expires = dt.datetime.fromisoformat(self.expires_at)
        except ValueError:
            raise ManifestInvalid("expires_at must be an ISO 8601 timestamp") from None
        if expires.tzinfo is None:
            raise ManifestInvalid("expires_at must carry a time zone")

    def document(self) -> dict[str, Any]:
        """The approval as a JSON object."""
        return {
            "v": ROLLBACK_VERSION,
            "kind": "rollback",
            "name": self.name,
            "device_type": self.device_type,
            "version": self.version,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "from_version": self.from_version,
            "expires_at": self.expires_at,
        }

    def permits(self, manifest: ReleaseManifest, *, installed_version: str | None) -> bool:
        """Whether this approval is for exactly `manifest`'s artefact, from `installed_version`
        (expiry is checked separately, against the device's clock)."""
        return (self.name, self.device_type, self.version, self.sha256, self.from_version) == (
            manifest.name,
            manifest.device_type,
            manifest.version,
            manifest.sha256,
            installed_version,
        )

    def expired(self, now: dt.datetime) -> bool:
        """Whether the approval's validity has ended at `now`."""
        return dt.datetime.fromisoformat(self.expires_at) <= now

    @classmethod
    def for_manifest(
        cls,
        manifest: ReleaseManifest,
        *,
        from_version: str,
        created_at: dt.datetime,
        valid_for: dt.timedelta,
    ) -> "RollbackApproval":
        """An approval to go from `from_version` back to `manifest`'s artefact."""
        return cls(
            manifest.name,
            manifest.device_type,
            manifest.version,
            manifest.sha256,
            created_at.isoformat(timespec="seconds"),
            from_version,
            (created_at + valid_for).isoformat(timespec="seconds"),
        )


@dataclass(frozen=True, slots=True)
class SignedRollback:
    """A rollback approval with its signature."""

    approval: RollbackApproval
    signature: str
    key_id: str

    def to_document(self) -> dict[str, Any]:
        """The JSON form carried in a notice."""
        return {
            "approval": self.approval.document(),
            "signature": self.signature,
            "key_id": self.key_id,
        }

    @classmethod
    def from_document(cls, document: object) -> "SignedRollback":
        """Parse the JSON form."""
        if not isinstance(document, dict) or set(document) != {"approval", "signature", "key_id"}:
            raise ManifestInvalid("a signed rollback has exactly approval, signature and key_id")
        approval, signature, kid = document["approval"], document["signature"], document["key_id"]
        if not isinstance(signature, str) or not isinstance(kid, str):
            raise ManifestInvalid("signature and key_id must be strings")
        fields = (
            "name",
            "device_type",
            "version",
            "sha256",
            "created_at",
            "from_version",
            "expires_at",
        )
        expected = {"v", "kind", *fields}
        if not isinstance(approval, dict) or set(approval) != expected:
            raise ManifestInvalid(f"a rollback approval has exactly the fields {sorted(expected)}")
        if approval["v"] != ROLLBACK_VERSION or approval["kind"] != "rollback":
            raise ManifestInvalid("unsupported rollback approval version or kind")
        if not all(isinstance(approval[f], str) for f in fields):
            raise ManifestInvalid("rollback approval fields must be strings")
        return cls(RollbackApproval(*(approval[f] for f in fields)), signature, kid)


def sign_rollback(approval: RollbackApproval, private_key: "Ed25519PrivateKey") -> SignedRollback:
    """Sign a rollback approval (done offline by the release team)."""
    signature = private_key.sign(canonical_json(approval.document()))
    return SignedRollback(
        approval, base64.b64encode(signature).decode(), key_id(private_key.public_key())
    )


def verify_rollback(signed: SignedRollback, trusted: dict[str, "Ed25519PublicKey"]) -> str:
    """Check a rollback approval's signature; returns the key id that verified it."""
    return verify_detached(
        "rollback approval",
        signed.signature,
        signed.key_id,
        canonical_json(signed.approval.document()),
        trusted,
    )


def load_public_key(pem: bytes) -> "Ed25519PublicKey":
    """Parse a PEM Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization  # lazily: see the imports
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("release keys must be Ed25519")
    return key


def load_trusted_keys(directory: Path) -> dict[str, "Ed25519PublicKey"]:
    """Every `*.pub` Ed25519 key in `directory`, by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub")):
        key = load_public_key(path.read_bytes())
        keys[key_id(key)] = key
    return keys
