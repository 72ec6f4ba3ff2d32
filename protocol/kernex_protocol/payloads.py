"""The JSON payload of every channel, with the checks a receiver applies before trusting it.

Each payload is a UTF-8 JSON object with a schema version `"v": 1`. `parse` refuses oversized
payloads before decoding them, unknown schema versions, missing or mistyped fields, and device
IDs or deployment IDs that could not be used safely; the error says which field. Unknown extra
fields are ignored, so a newer sender can add fields without breaking an older receiver.
docs/protocol.md documents every field.
"""

import base64
import dataclasses
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from kernex_protocol.canonical import canonical_json
from kernex_protocol.ids import is_valid_device_id
from kernex_protocol.limits import INT_LIMITS, MAX_CONTAINERS, MAX_PAYLOAD_BYTES
from kernex_protocol.manifest import (
    ManifestInvalid,
    ReleaseManifest,
    SignedRelease,
    SignedRollback,
    key_id,
    verify_detached,
)

if TYPE_CHECKING:  # cryptography is loaded where a key is used (kernex_protocol.manifest)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
from kernex_protocol.topics import Channel

PAYLOAD_VERSION: Final = 1
# Deployment and request IDs become file names on the device and keys in logs.
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_DETAIL_CHARS: Final = 500

T = TypeVar("T")
_JSON_TYPES: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "a JSON object",
}


class PayloadInvalid(ValueError):
    """A payload is malformed; the message names the field."""


class ProgressState(StrEnum):
    """What a device reports about one deployment on its progress topic."""

    # Refused before anything started (signature, device type, expiry, downgrade, size).
    REJECTED = "rejected"
    # The target version already runs; nothing was done.
    ALREADY_INSTALLED = "already_installed"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    HEALTH_CHECK = "health_check"
    COMMITTING = "committing"
    ROLLING_BACK = "rolling_back"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES: Final = frozenset(
    {
        ProgressState.REJECTED,
        ProgressState.ALREADY_INSTALLED,
        ProgressState.COMMITTED,
        ProgressState.ROLLED_BACK,
        ProgressState.FAILED,
        ProgressState.CANCELED,
    }
)


class ErrorCode(StrEnum):
    """Why a deployment did not succeed; stable strings an operator can filter on."""

    MALFORMED_NOTICE = "malformed_notice"
    WRONG_PRODUCT = "wrong_product"
    RELEASE_TOO_OLD = "release_too_old"
    WRONG_DEVICE = "wrong_device"
    WRONG_DEVICE_TYPE = "wrong_device_type"
    NOTICE_EXPIRED = "notice_expired"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_KEY = "unknown_key"
    DOWNGRADE_REFUSED = "downgrade_refused"
    TOO_LARGE = "too_large"
    DISK_FULL = "disk_full"
    DOWNLOAD_FAILED = "download_failed"
    URL_UNAVAILABLE = "url_unavailable"
    SIZE_MISMATCH = "size_mismatch"
    DIGEST_MISMATCH = "digest_mismatch"
    INSTALL_FAILED = "install_failed"
    HEALTH_CHECK_FAILED = "health_check_failed"
    COMMIT_FAILED = "commit_failed"
    ROLLBACK_FAILED = "rollback_failed"
    LOOP_DETECTED = "loop_detected"
    SUPERSEDED = "superseded"
    # The agent hit an error of its own while working (reported instead of crash-looping).
    AGENT_ERROR = "agent_error"
    # The saved update state was unreadable; the device went on from its installed version.
    STATE_DAMAGED = "state_damaged"


# --- field helpers ------------------------------------------------------------------------


def _refuse_constant(name: str) -> None:
    raise PayloadInvalid(f"{name} is not a JSON number")


def _decode(raw: bytes, channel: Channel) -> dict[str, Any]:
    limit = MAX_PAYLOAD_BYTES[channel]
    if len(raw) > limit:
        raise PayloadInvalid(f"payload of {len(raw)} bytes exceeds the {limit}-byte limit")
    # Counted on the bytes (brackets inside strings count too: no payload of ours needs many),
    # so nesting never reaches the recursive decoder.
    if raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:
        raise PayloadInvalid(f"payload holds more than {MAX_CONTAINERS} objects and arrays")
    try:
        document = json.loads(raw, parse_constant=_refuse_constant)
    except PayloadInvalid:
        raise
    except (ValueError, RecursionError):  # also: integers of thousands of digits
        raise PayloadInvalid("payload is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise PayloadInvalid("payload must be a JSON object")
    version = document.get("v")
    if type(version) is not int or version != PAYLOAD_VERSION:  # `true` is not 1
        raise PayloadInvalid(f"unsupported payload version {str(version)[:16]!r}")
    return document


def storable(value: str) -> bool:
    """Whether PostgreSQL can store `value` as text and in jsonb: no NUL, valid UTF-8."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return False
    return True


def _typed(document: dict[str, Any], name: str, kind: type[T], *, optional: bool = False) -> T:
    value = document.get(name)
    if value is None and optional:
        return value  # type: ignore[return-value]
    # bool is an int in Python; a JSON true is never a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        described = _JSON_TYPES.get(kind, kind.__name__)
        raise PayloadInvalid(f"{name} must be {described}" + ("" if optional else " (required)"))
    if isinstance(value, str) and not storable(value):
        raise PayloadInvalid(f"{name} holds a NUL character or invalid UTF-8")
    return value


def _int(document: dict[str, Any], name: str, limit: str, *, optional: bool = False) -> int:
    """An integer field within its range from INT_LIMITS."""
    value = _typed(document, name, int, optional=optional)
    bounds = INT_LIMITS[limit]
    if value is not None and not bounds.low <= value <= bounds.high:
        raise PayloadInvalid(f"{name} must be {bounds.low}-{bounds.high}")
    return value


def is_token(value: str) -> bool:
    """Whether `value` is usable as a deployment or request ID (a file name, a log key)."""
    return _TOKEN_RE.fullmatch(value) is not None


def _token(document: dict[str, Any], name: str) -> str:
    value = _typed(document, name, str)
    if not is_token(value):
        raise PayloadInvalid(f"{name} must be 1-64 characters from A-Z a-z 0-9 . _ -")
    return value


def _device_id(document: dict[str, Any]) -> str:
    value = _typed(document, "device_id", str)
    if not is_valid_device_id(value):
        raise PayloadInvalid("device_id is not a valid device ID")
    return value


_NAME_RE = re.compile(r"[a-z][a-z_]{0,31}")


def _name(d: dict[str, Any], key: str) -> str | None:
    """An optional lower_snake_case name of at most 32 characters (a state, an error code)."""
    value = _typed(d, key, str, optional=True)
    if value is not None and not _NAME_RE.fullmatch(value):
        raise PayloadInvalid(f"{key} must be a lower_snake_case name of at most 32 characters")
    return value


def _short_text(value: str | None, limit: int = 64) -> str | None:
    return None if value is None else value[:limit]


def _encode(document: dict[str, Any]) -> bytes:
    body = {"v": PAYLOAD_VERSION, **{k: v for k, v in document.items() if v is not None}}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


# --- device -> cloud ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presence:
    """Birth (online) and Last Will or goodbye (offline) of one MQTT session.

    `session` grows with every connection attempt, across reboots, so a receiver ignores an
    offline that belongs to an older session than the online it already has.
    """

    online: bool
    session: int
    agent_version: str | None = None
    installed_version: str | None = None
    cert_serial: str | None = None  # hex; lets the backend retire a superseded certificate
    reason: str | None = None  # offline only: "shutdown" or "lost" (the Last Will)

    def to_payload(self) -> bytes:
        """The wire form."""
        return _encode(
            {
                "online": self.online,
                "session": self.session,
                "agent_version": self.agent_version,
                "installed_version": self.installed_version,
                "cert_serial": self.cert_serial,
                "reason": self.reason,
            }
        )

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Validate and decode."""
        d = _decode(raw, Channel.PRESENCE)
        return cls(
            online=_typed(d, "online", bool),
            session=_int(d, "session", "session"),
            agent_version=_short_text(_typed(d, "agent_version", str, optional=True)),
            installed_version=_short_text(_typed(d, "installed_version", str, optional=True)),
            cert_serial=_short_text(_typed(d, "cert_serial", str, optional=True), 40),
            reason=_short_text(_typed(d, "reason", str, optional=True), 32),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic liveness and health of a device."""

    seq: int  # restarts at 0 with each agent start
    session: int
    sent_at: str  # ISO 8601 UTC, the device's clock
    uptime_s: int
    agent_version: str
    installed_version: str | None = None
    metrics: dict[str, int] = field(default_factory=dict)  # integers: see docs/protocol.md
    # The agent's own health: the update state it is in ("idle" between updates) and the error
    # code of its last update outcome (None after a success). Both lower_snake_case names.
    update_state: str | None = None
    last_error: str | None = None

    def to_payload(self) -> bytes:
        """The wire form."""
        return _encode(
            {
                "seq": self.seq,
                "session": self.session,
                "sent_at": self.sent_at,
                "uptime_s": self.uptime_s,
                "agent_version": self.agent_version,
                "installed_version": self.installed_version,
                "metrics": self.metrics,
                "update_state": self.update_state,
                "last_error": self.last_error,
            }
        )

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Validate and decode."""
        d = _decode(raw, Channel.HEARTBEAT)
        metrics = _typed(d, "metrics", dict, optional=True) or {}
        bounds = INT_LIMITS["heartbeat.metric"]
        if len(metrics) > 32 or not all(
            len(k) <= 32 and storable(k) and type(v) is int and bounds.low <= v <= bounds.high
            for k, v in metrics.items()
        ):
            raise PayloadInvalid(
                "metrics must map at most 32 short names to integers within ±(2^53-1)"
            )
        return cls(
            seq=_int(d, "seq", "heartbeat.seq"),
            session=_int(d, "session", "session"),
            sent_at=_typed(d, "sent_at", str)[:40],
            uptime_s=_int(d, "uptime_s", "heartbeat.uptime_s"),
            agent_version=_typed(d, "agent_version", str)[:64],
            installed_version=_short_text(_typed(d, "installed_version", str, optional=True)),
            metrics=metrics,
            update_state=_name(d, "update_state"),
            last_error=_name(d, "last_error"),
        )


@dataclass(frozen=True, slots=True)
class ProgressError:
    """Why a deployment failed or was refused."""

    code: ErrorCode
    detail: str = ""

    def document(self) -> dict[str, str]:
        """The JSON form."""
        return {"code": self.code.value, "detail": self.detail[:MAX_DETAIL_CHARS]}


@dataclass(frozen=True, slots=True)
class Progress:
    """One step of a deployment on a device."""

    deployment_id: str
    state: ProgressState
    seq: int  # grows per deployment on this device, so duplicates and reordering show
    sent_at: str
    version: str | None = None  # the target version
    percent: int | None = None  # while downloading
    error: ProgressError | None = None
    # Which attempt of the deployment (the notice's); None from agents before retries existed.
    attempt: int | None = None

    def to_payload(self) -> bytes:
        """The wire form."""
        return _encode(
            {
                "deployment_id": self.deployment_id,
                "state": self.state.value,
                "seq": self.seq,
                "sent_at": self.sent_at,
                "version": self.version,
                "percent": self.percent,
                "error": None if self.error is None else self.error.document(),
                "attempt": self.attempt,
            }
        )

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Validate and decode."""
        d = _decode(raw, Channel.PROGRESS)
        try:
            state = ProgressState(_typed(d, "state", str))
        except ValueError:
            raise PayloadInvalid(f"unknown state {str(d.get('state'))[:32]!r}") from None
        percent = _int(d, "percent", "progress.percent", optional=True)
        error = None
        raw_error = _typed(d, "error", dict, optional=True)
        if raw_error is not None:
            try:
                code = ErrorCode(_typed(raw_error, "code", str))
            except ValueError:
                raise PayloadInvalid("error.code is not a known code") from None
            detail = _typed(raw_error, "detail", str, optional=True) or ""
            error = ProgressError(code, detail[:MAX_DETAIL_CHARS])
        return cls(
            deployment_id=_token(d, "deployment_id"),
            state=state,
            seq=_int(d, "seq", "progress.seq"),
            sent_at=_typed(d, "sent_at", str)[:40],
            version=_short_text(_typed(d, "version", str, optional=True)),
            percent=percent,
            error=error,
            attempt=_int(d, "attempt", "attempt", optional=True),
        )


@dataclass(frozen=True, slots=True)
class UrlRequest:
    """A device asks for a fresh download URL (the one it had expired or was refused)."""

    request_id: str
    deployment_id: str

    def to_payload(self) -> bytes:
        """The wire form."""
        return _encode({"request_id": self.request_id, "deployment_id": self.deployment_id})

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Validate and decode."""
        d = _decode(raw, Channel.URL_REQUEST)
        return cls(request_id=_token(d, "request_id"), deployment_id=_token(d, "deployment_id"))


# --- cloud -> device ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UrlResponse:
    """The answer to a UrlRequest: a presigned URL, or why there is none."""

    request_id: str
    deployment_id: str
    url: str | None = None  # a bearer credential: never log it
    expires_at: str | None = None
    error: str | None = None  # e.g. "deployment_not_active"

    def to_payload(self) -> bytes:
        """The wire form."""
        return _encode(
            {
                "request_id": self.request_id,
                "deployment_id": self.deployment_id,
                "url": self.url,
                "expires_at": self.expires_at,
                "error": self.error,
            }
        )

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Validate and decode."""
        d = _decode(raw, Channel.URL_RESPONSE)
        url = _typed(d, "url", str, optional=True)
        error = _short_text(_typed(d, "error", str, optional=True))
        if (url is None) == (error is None):
            raise PayloadInvalid("a URL response carries either url or error")
        if url is not None and not url.startswith(("https://", "http://")):
            raise PayloadInvalid("url must be an http(s) URL")
        return cls(
            request_id=_token(d, "request_id"),
            deployment_id=_token(d, "deployment_id"),
            url=url,
            expires_at=_short_text(_typed(d, "expires_at", str, optional=True), 40),
            error=error,
        )


@dataclass(frozen=True, slots=True)
class Notice:
    """A deployment notice, retained on the device's deployment topic; empty = none.

    Only the backend may publish it (broker ACL over mutual TLS): that is its origin. What is
    installed is decided by `release`, signed offline by the release team and verified by the
    device against its trusted release keys; `rollback` is the signed permission a downgrade
    needs. `url` is optional: without it the device asks over url/request.
    """

    deployment_id: str
    device_id: str
    release: SignedRelease
    issued_at: str
    expires_at: str | None = None  # after this the device does not start the deployment
    url: str | None = None
    url_expires_at: str | None = None  # when `url` stops working (then: url/request)
    rollback: SignedRollback | None = None
    # The backend's attempt number for this device (grows when a failed device is retried).
    attempt: int = 1
    # Seconds the device waits before it starts (the rollout's jitter against a thundering
    # herd); a newer notice or a withdrawal during the wait replaces it.
    start_delay_s: int = 0
    # The backend's online notice key over `claims()`: which device, which deployment, which
    # release, until when. Devices refuse a notice without a valid one (docs/security.md).
    signature: str | None = None
    key_id: str | None = None

    @property
    def manifest(self) -> ReleaseManifest:
        """The release manifest (verified separately)."""
        return self.release.manifest

    def claims(self) -> bytes:
        """What the notice signature covers: the canonical JSON of device, deployment, the
        release's identity and digest, and the validity window."""
        return canonical_json(self.claims_document())

    def claims_document(self) -> dict[str, Any]:
        """The claims before encoding."""
        return {
            "v": PAYLOAD_VERSION,
            "kind": "notice",
            "device_id": self.device_id,
            "deployment_id": self.deployment_id,
            "name": self.manifest.name,
            "version": self.manifest.version,
            "sha256": self.manifest.sha256,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "attempt": self.attempt,
            "start_delay_s": self.start_delay_s,
        }

    def signed_with(self, key: "Ed25519PrivateKey", *, kid: str | None = None) -> "Notice":
        """This notice with the backend's signature over its claims; `kid` is the key's id
        when the caller knows it already (a publisher signing thousands of notices)."""
        signature = base64.b64encode(key.sign(self.claims())).decode()
        return dataclasses.replace(
            self, signature=signature, key_id=kid or key_id(key.public_key())
        )

    def verify(self, trusted: dict[str, "Ed25519PublicKey"]) -> str:
        """Check the notice signature against the trusted notice keys; returns the key id.
        Raises UnknownKey or SignatureInvalid (also when unsigned)."""
        return verify_detached("notice", self.signature, self.key_id, self.claims(), trusted)

    def signed_payload(self, key: "Ed25519PrivateKey", *, kid: str) -> bytes:
        """The wire form of this notice signed with `key` (whose id is `kid`): the bytes of
        `signed_with(key, kid=kid).to_payload()`, without the signed copy in between (a
        backend signs one notice per device)."""
        signature = base64.b64encode(key.sign(self.claims())).decode()
        return self._wire(signature, kid)

    def to_payload(self) -> bytes:
        """The wire form."""
        return self._wire(self.signature, self.key_id)

    def _wire(self, signature: str | None, kid: str | None) -> bytes:
        return _encode(self.wire_document(signature, kid))

    def wire_document(self, signature: str | None, kid: str | None) -> dict[str, Any]:
        """The wire form before encoding, with this signature and key id."""
        return {
            "deployment_id": self.deployment_id,
            "device_id": self.device_id,
            "release": self.release.to_document(),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "url": self.url,
            "url_expires_at": self.url_expires_at,
            "rollback": None if self.rollback is None else self.rollback.to_document(),
            "attempt": self.attempt,
            "start_delay_s": self.start_delay_s,
            "signature": signature,
            "key_id": kid,
        }

    @classmethod
    def parse(cls, raw: bytes) -> Self:
        """Validate and decode (signatures are checked by the receiver, against its keys)."""
        d = _decode(raw, Channel.DEPLOYMENT)
        release_doc = _typed(d, "release", dict)
        url = _typed(d, "url", str, optional=True)
        if url is not None and not url.startswith(("https://", "http://")):
            raise PayloadInvalid("url must be an http(s) URL")
        try:
            release = SignedRelease.from_json(json.dumps(release_doc))
            rollback_doc = d.get("rollback")
            rollback = None if rollback_doc is None else SignedRollback.from_document(rollback_doc)
        except ManifestInvalid as exc:
            raise PayloadInvalid(str(exc)) from None
        return cls(
            deployment_id=_token(d, "deployment_id"),
            device_id=_device_id(d),
            release=release,
            issued_at=_typed(d, "issued_at", str)[:40],
            expires_at=_short_text(_typed(d, "expires_at", str, optional=True), 40),
            url=url,
            url_expires_at=_short_text(_typed(d, "url_expires_at", str, optional=True), 40),
            rollback=rollback,
            attempt=_int(d, "attempt", "attempt", optional=True) or 1,
            start_delay_s=_int(d, "start_delay_s", "notice.start_delay_s", optional=True) or 0,
            signature=_short_text(_typed(d, "signature", str, optional=True), 128),
            key_id=_short_text(_typed(d, "key_id", str, optional=True), 64),
        )
