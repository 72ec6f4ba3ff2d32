"""Notice checks: every refusal has its code, downgrades need a signed approval."""

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_agent.notices import NoticeRejected, Verdict, check_notice
from kernex_agent.transport import Failure, classify
from kernex_protocol.manifest import (
    ReleaseManifest,
    RollbackApproval,
    key_id,
    sign,
    sign_rollback,
)
from kernex_protocol.payloads import ErrorCode, Notice

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
KEY = Ed25519PrivateKey.generate()
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}


def notice(version: str = "2.0.0", **changes: object) -> Notice:
    manifest = ReleaseManifest(
        "app",
        version,
        str(changes.pop("device_type", "gw")),
        "a" * 64,
        int(str(changes.pop("size", 100))),
        "2026-11-28T00:00:00+00:00",
    )
    key = changes.pop("key", KEY)
    fields: dict[str, object] = {
        "deployment_id": "dep-1",
        "device_id": "dev-1",
        "release": sign(manifest, key),  # type: ignore[arg-type]
        "issued_at": NOW.isoformat(),
        "expires_at": (NOW + dt.timedelta(hours=1)).isoformat(),
    }
    fields.update(changes)
    return Notice(**fields)  # type: ignore[arg-type]


def check(n: Notice, installed: str | None = "1.0.0") -> Verdict:
    return check_notice(
        n,
        device_id="dev-1",
        device_type="gw",
        trusted_keys=TRUSTED,
        installed_version=installed,
        max_bundle_bytes=1000,
        now=NOW,
    )


def code_of(n: Notice, installed: str | None = "1.0.0") -> ErrorCode:
    with pytest.raises(NoticeRejected) as caught:
        check(n, installed)
    return caught.value.code


def test_acceptable_notices() -> None:
    assert check(notice()) == Verdict.START
    assert check(notice(), installed=None) == Verdict.START
    assert check(notice("1.0.0")) == Verdict.ALREADY_INSTALLED
    assert check(notice("1.0.1-rc.1")) == Verdict.START


def test_each_refusal_has_its_code() -> None:
    assert code_of(notice(device_id="dev-2")) == ErrorCode.WRONG_DEVICE
    assert code_of(notice(key=Ed25519PrivateKey.generate())) == ErrorCode.UNKNOWN_KEY
    assert code_of(notice(device_type="other")) == ErrorCode.WRONG_DEVICE_TYPE
    assert code_of(notice(size=1001)) == ErrorCode.TOO_LARGE
    assert code_of(notice(expires_at=NOW.isoformat())) == ErrorCode.NOTICE_EXPIRED
    assert code_of(notice(expires_at="soon")) == ErrorCode.MALFORMED_NOTICE
    good = notice()
    tampered = Notice(
        good.deployment_id,
        good.device_id,
        type(good.release)(
            ReleaseManifest("app", "2.0.0", "gw", "b" * 64, 100, "2026-11-28T00:00:00+00:00"),
            good.release.signature,
            good.release.key_id,
        ),
        issued_at=good.issued_at,
    )
    assert code_of(tampered) == ErrorCode.SIGNATURE_INVALID


def test_downgrade_needs_an_approval_for_exactly_that_artefact() -> None:
    older = notice("0.9.0")
    assert code_of(older) == ErrorCode.DOWNGRADE_REFUSED
    assert code_of(notice("1.0.0-rc.1")) == ErrorCode.DOWNGRADE_REFUSED  # pre-release < release
    approval = RollbackApproval.for_manifest(older.manifest, NOW.isoformat())
    approved = notice("0.9.0", rollback=sign_rollback(approval, KEY))
    assert check(approved) == Verdict.START
    stranger = notice("0.9.0", rollback=sign_rollback(approval, Ed25519PrivateKey.generate()))
    assert code_of(stranger) == ErrorCode.DOWNGRADE_REFUSED
    other = RollbackApproval("app", "gw", "0.8.0", "a" * 64, NOW.isoformat())
    assert code_of(notice("0.9.0", rollback=sign_rollback(other, KEY))) == (
        ErrorCode.DOWNGRADE_REFUSED
    )


def test_connection_errors_are_classified() -> None:
    import ssl

    verify_error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify_error.verify_message = "Hostname mismatch"
    assert classify(verify_error).failure == Failure.PERMANENT
    refused = ssl.SSLError(1, "alert")
    refused.reason = "SSLV3_ALERT_CERTIFICATE_REVOKED"
    assert classify(refused).failure == Failure.PERMANENT
    assert classify(ConnectionRefusedError(111, "refused")).failure == Failure.TRANSIENT
    assert classify(TimeoutError()).failure == Failure.TRANSIENT
