"""Deciding whether a deployment notice may be acted on, before anything is downloaded."""

import datetime as dt
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kernex_protocol.manifest import (
    SignatureInvalid,
    UnknownKey,
    parse_semver,
    verify,
    verify_rollback,
)
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


def check_notice(
    notice: Notice,
    *,
    device_id: str,
    device_type: str,
    trusted_keys: dict[str, Ed25519PublicKey],
    installed_version: str | None,
    max_bundle_bytes: int,
    now: dt.datetime,
) -> Verdict:
    """Raise NoticeRejected unless every check passes; then say whether there is work to do."""
    if notice.device_id != device_id:
        raise NoticeRejected(ErrorCode.WRONG_DEVICE, f"the notice is for {notice.device_id}")
    try:
        verify(notice.release, trusted_keys)
    except UnknownKey as exc:
        raise NoticeRejected(ErrorCode.UNKNOWN_KEY, str(exc)) from None
    except SignatureInvalid as exc:
        raise NoticeRejected(ErrorCode.SIGNATURE_INVALID, str(exc)) from None
    manifest = notice.manifest
    if manifest.device_type != device_type:
        raise NoticeRejected(
            ErrorCode.WRONG_DEVICE_TYPE,
            f"the release is for {manifest.device_type}, this device is {device_type}",
        )
    if notice.expires_at is not None and _timestamp(notice.expires_at, "expires_at") <= now:
        raise NoticeRejected(ErrorCode.NOTICE_EXPIRED, f"the notice expired at {notice.expires_at}")
    if manifest.size > max_bundle_bytes:
        raise NoticeRejected(
            ErrorCode.TOO_LARGE, f"{manifest.size} bytes is over this device's {max_bundle_bytes}"
        )
    return _check_version(notice, installed_version, trusted_keys)


def _check_version(
    notice: Notice, installed_version: str | None, trusted_keys: dict[str, Ed25519PublicKey]
) -> Verdict:
    """Same version: nothing to do; lower: only with a signed rollback approval for it."""
    manifest = notice.manifest
    if installed_version is None:
        return Verdict.START
    if manifest.version == installed_version:
        return Verdict.ALREADY_INSTALLED
    try:
        older = parse_semver(manifest.version) < parse_semver(installed_version)
    except ValueError:
        older = False  # the running version predates semantic versions: allow moving on
    if not older:
        return Verdict.START
    if notice.rollback is None:
        raise NoticeRejected(
            ErrorCode.DOWNGRADE_REFUSED,
            f"{manifest.version} is older than the installed {installed_version}, "
            "and the notice carries no signed rollback approval",
        )
    try:
        verify_rollback(notice.rollback, trusted_keys)
    except SignatureInvalid as exc:
        raise NoticeRejected(ErrorCode.DOWNGRADE_REFUSED, f"rollback approval: {exc}") from None
    if not notice.rollback.approval.permits(manifest):
        raise NoticeRejected(
            ErrorCode.DOWNGRADE_REFUSED, "the rollback approval is for another artefact"
        )
    return Verdict.START
