"""Deciding whether a deployment notice may be acted on, before anything is downloaded."""

import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from kernex_agent.files import write_atomic
from kernex_protocol.manifest import (
    SignatureInvalid,
    UnknownKey,
    parse_semver,
    verify,
    verify_rollback,
)

if TYPE_CHECKING:  # loaded when a key is read, not by an idle agent
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from kernex_protocol.payloads import ErrorCode, Notice


class Verdict(StrEnum):
    """What to do with an acceptable notice."""

    START = "start"
    ALREADY_INSTALLED = "already_installed"


class NoticeRejected(Exception):
    """The notice must not be acted on; `code` says why."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _timestamp(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise NoticeRejected(ErrorCode.MALFORMED_NOTICE, f"{name} is not a timestamp") from None
    if parsed.tzinfo is None:
        raise NoticeRejected(ErrorCode.MALFORMED_NOTICE, f"{name} has no time zone")
    return parsed


NOTHING_INSTALLED = "0.0.0"


@dataclass(frozen=True, slots=True)
class Installed:
    """The release this device runs: its product and version."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class NoticePolicy:
    """What this device accepts, from its configuration."""

    device_id: str
    device_type: str
    products: tuple[str, ...]  # release names this device runs
    release_keys: dict[str, "Ed25519PublicKey"]
    notice_keys: dict[str, "Ed25519PublicKey"]
    max_bundle_bytes: int
    max_notice_ttl: dt.timedelta  # how far ahead a notice's expiry may lie
    max_release_age: dt.timedelta | None  # older releases need a rollback approval


def check_notice(
    notice: Notice, policy: NoticePolicy, *, installed: Installed | None, now: dt.datetime
) -> Verdict:
    """Raise NoticeRejected unless every check passes; then say whether there is work to do.

    The notice must be for this device and signed by the backend's notice key, with an expiry
    that has not passed and is not too far ahead (so a captured notice cannot be replayed for
    long); the release must be signed by a release key, for a product and device type this
    device runs, within its size limit, not older than the configured age and not lower than
    the installed version of the same product, unless an approval allows exactly that."""
    if notice.device_id != policy.device_id:
        raise NoticeRejected(ErrorCode.WRONG_DEVICE, f"the notice is for {notice.device_id}")
    _check_origin(notice, policy, now)
    try:
        verify(notice.release, policy.release_keys)
    except UnknownKey as exc:
        raise NoticeRejected(ErrorCode.UNKNOWN_KEY, str(exc)) from None
    except SignatureInvalid as exc:
        raise NoticeRejected(ErrorCode.SIGNATURE_INVALID, str(exc)) from None
    manifest = notice.manifest
    if manifest.name not in policy.products:
        raise NoticeRejected(
            ErrorCode.WRONG_PRODUCT,
            f"the release is of {manifest.name!r}; this device runs {list(policy.products)}",
        )
    if manifest.device_type != policy.device_type:
        raise NoticeRejected(
            ErrorCode.WRONG_DEVICE_TYPE,
            f"the release is for {manifest.device_type}, this device is {policy.device_type}",
        )
    if manifest.size > policy.max_bundle_bytes:
        raise NoticeRejected(
            ErrorCode.TOO_LARGE,
            f"{manifest.size} bytes is over this device's {policy.max_bundle_bytes}",
        )
    same_product = installed if installed is not None and installed.name == manifest.name else None
    if same_product is not None and manifest.version == same_product.version:
        return Verdict.ALREADY_INSTALLED
    needs = _needs_approval(notice, policy, same_product, now)
    if needs is not None:
        _check_approval(notice, policy, same_product, now, needs)
    return Verdict.START


def _check_origin(notice: Notice, policy: NoticePolicy, now: dt.datetime) -> None:
    """The backend's signature, and a validity window that is open and short."""
    try:
        notice.verify(policy.notice_keys)
    except UnknownKey as exc:
        raise NoticeRejected(ErrorCode.UNKNOWN_KEY, str(exc)) from None
    except SignatureInvalid as exc:
        raise NoticeRejected(ErrorCode.SIGNATURE_INVALID, str(exc)) from None
    if notice.expires_at is None:
        raise NoticeRejected(ErrorCode.MALFORMED_NOTICE, "the notice carries no expiry")
    expires = _timestamp(notice.expires_at, "expires_at")
    if expires <= now:
        raise NoticeRejected(ErrorCode.NOTICE_EXPIRED, f"the notice expired at {notice.expires_at}")
    if expires > now + policy.max_notice_ttl:
        raise NoticeRejected(
            ErrorCode.NOTICE_EXPIRED,
            f"the notice's expiry {notice.expires_at} is further ahead than this device allows",
        )


def _needs_approval(
    notice: Notice, policy: NoticePolicy, installed: Installed | None, now: dt.datetime
) -> ErrorCode | None:
    """Why this release may only be installed with a rollback approval, or None."""
    manifest = notice.manifest
    if installed is not None:
        try:
            if parse_semver(manifest.version) < parse_semver(installed.version):
                return ErrorCode.DOWNGRADE_REFUSED
        except ValueError:
            pass  # the running version predates semantic versions: allow moving on
    if policy.max_release_age is not None:
        created = _timestamp(manifest.created_at, "created_at")
        if created < now - policy.max_release_age:
            return ErrorCode.RELEASE_TOO_OLD
    return None


def _check_approval(
    notice: Notice,
    policy: NoticePolicy,
    installed: Installed | None,
    now: dt.datetime,
    code: ErrorCode,
) -> None:
    """A rollback approval signed by a release key, for exactly this artefact, from exactly
    the installed version, not expired."""
    manifest = notice.manifest
    why = (
        f"{manifest.version} is older than the installed {installed.version if installed else ''}"
        if code == ErrorCode.DOWNGRADE_REFUSED
        else f"the release was made {manifest.created_at}, longer ago than this device accepts"
    )
    if notice.rollback is None:
        raise NoticeRejected(code, f"{why}, and the notice carries no signed rollback approval")
    try:
        verify_rollback(notice.rollback, policy.release_keys)
    except SignatureInvalid as exc:
        raise NoticeRejected(code, f"rollback approval: {exc}") from None
    approval = notice.rollback.approval
    # A device with nothing of this product installed is "0.0.0" to an approval.
    from_version = installed.version if installed is not None else NOTHING_INSTALLED
    if not approval.permits(manifest, installed_version=from_version):
        raise NoticeRejected(
            code, "the rollback approval is for another artefact or another installed version"
        )
    if approval.expired(now):
        raise NoticeRejected(code, f"the rollback approval expired at {approval.expires_at}")


def load_installed(path: Path) -> Installed | None:
    """The installed release recorded at the last commit, or None (none, or unreadable)."""
    try:
        document = json.loads(path.read_bytes())
        return Installed(str(document["name"]), str(document["version"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_installed(path: Path, installed: Installed) -> None:
    """Record the committed release (product and version), durably."""
    write_atomic(path, json.dumps({"name": installed.name, "version": installed.version}).encode())
