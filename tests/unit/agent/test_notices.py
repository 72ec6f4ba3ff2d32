"""Notice checks (Uptane-style): every refusal has its code; the notice must be signed by the
backend's notice key and expire soon; the release must be of a product this device runs, not
too old, and not lower than the installed version of that product unless an approval that names
the installed version and has not expired allows it."""

import dataclasses
import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_agent.notices import (
    Installed,
    NoticePolicy,
    NoticeRejected,
    Verdict,
    check_notice,
    load_installed,
    save_installed,
)
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
RELEASE_KEY = Ed25519PrivateKey.generate()
NOTICE_KEY = Ed25519PrivateKey.generate()
POLICY = NoticePolicy(
    device_id="dev-1",
    device_type="gw",
    products=("app", "tools"),
    release_keys={key_id(RELEASE_KEY.public_key()): RELEASE_KEY.public_key()},
    notice_keys={key_id(NOTICE_KEY.public_key()): NOTICE_KEY.public_key()},
    max_bundle_bytes=1000,
    max_notice_ttl=dt.timedelta(days=1),
    max_release_age=dt.timedelta(days=365),
)
APP_1 = Installed("app", "1.0.0")


def manifest(version: str = "2.0.0", **changes: Any) -> ReleaseManifest:
    fields: dict[str, Any] = {
        "name": "app",
        "version": version,
        "device_type": "gw",
        "sha256": "a" * 64,
        "size": 100,
        "created_at": "2026-11-28T00:00:00+00:00",
    }
    fields.update(changes)
    return ReleaseManifest(**fields)


def notice(
    version: str = "2.0.0",
    *,
    release_key: Ed25519PrivateKey = RELEASE_KEY,
    notice_key: Ed25519PrivateKey | None = NOTICE_KEY,
    manifest_changes: dict[str, Any] | None = None,
    **changes: Any,
) -> Notice:
    fields: dict[str, Any] = {
        "deployment_id": "dep-1",
        "device_id": "dev-1",
        "release": sign(manifest(version, **(manifest_changes or {})), release_key),
        "issued_at": NOW.isoformat(),
        "expires_at": (NOW + dt.timedelta(hours=1)).isoformat(),
    }
    fields.update(changes)
    unsigned = Notice(**fields)
    return unsigned if notice_key is None else unsigned.signed_with(notice_key)


def check(n: Notice, installed: Installed | None = APP_1, policy: NoticePolicy = POLICY) -> Verdict:
    return check_notice(n, policy, installed=installed, now=NOW)


def code_of(n: Notice, installed: Installed | None = APP_1) -> ErrorCode:
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
    assert code_of(notice(release_key=Ed25519PrivateKey.generate())) == ErrorCode.UNKNOWN_KEY
    assert code_of(notice(manifest_changes={"device_type": "other"})) == (
        ErrorCode.WRONG_DEVICE_TYPE
    )
    assert code_of(notice(manifest_changes={"size": 1001})) == ErrorCode.TOO_LARGE
    assert code_of(notice(expires_at=NOW.isoformat())) == ErrorCode.NOTICE_EXPIRED
    assert code_of(notice(expires_at="soon")) == ErrorCode.MALFORMED_NOTICE
    good = notice()
    tampered_release = dataclasses.replace(
        good,
        release=dataclasses.replace(good.release, manifest=manifest(sha256="b" * 64)),
    ).signed_with(NOTICE_KEY)
    assert code_of(tampered_release) == ErrorCode.SIGNATURE_INVALID


# --- the notice's origin: the backend's online key, a short validity ----------------------


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: notice(notice_key=None), ErrorCode.SIGNATURE_INVALID),  # unsigned
        (lambda: notice(notice_key=Ed25519PrivateKey.generate()), ErrorCode.UNKNOWN_KEY),
        (lambda: notice(notice_key=RELEASE_KEY), ErrorCode.UNKNOWN_KEY),  # a release key
        # The signature covers the device, the deployment, the release and the expiry.
        (lambda: dataclasses.replace(notice(), device_id="dev-1 "), ErrorCode.WRONG_DEVICE),
        (lambda: dataclasses.replace(notice(), deployment_id="dep-2"), ErrorCode.SIGNATURE_INVALID),
        (
            lambda: dataclasses.replace(
                notice(), expires_at=(NOW + dt.timedelta(hours=2)).isoformat()
            ),
            ErrorCode.SIGNATURE_INVALID,
        ),
        (
            lambda: dataclasses.replace(notice(), release=notice("3.0.0").release),
            ErrorCode.SIGNATURE_INVALID,
        ),
        (
            lambda: dataclasses.replace(notice(), signature="AAAA" + notice().signature[4:]),  # type: ignore[index]
            ErrorCode.SIGNATURE_INVALID,
        ),
    ],
    ids=[
        "unsigned",
        "unknown-key",
        "release-key",
        "device",
        "deployment",
        "expiry",
        "release",
        "bits",
    ],
)
def test_only_the_backends_notice_key_vouches_for_a_notice(make: Any, code: ErrorCode) -> None:
    assert code_of(make()) == code


def test_a_notice_must_expire_and_soon() -> None:
    assert code_of(notice(expires_at=None)) == ErrorCode.MALFORMED_NOTICE
    far = (NOW + dt.timedelta(days=30)).isoformat()
    assert code_of(notice(expires_at=far)) == ErrorCode.NOTICE_EXPIRED  # freeze/replay window
    replayed = notice(expires_at=(NOW - dt.timedelta(seconds=1)).isoformat())
    assert code_of(replayed) == ErrorCode.NOTICE_EXPIRED


# --- mix-and-match: products and their own version orders ---------------------------------


def test_a_release_of_another_product_is_refused() -> None:
    other = notice(manifest_changes={"name": "vendor-firmware"})
    assert code_of(other) == ErrorCode.WRONG_PRODUCT
    assert code_of(other, installed=None) == ErrorCode.WRONG_PRODUCT
    nothing = dataclasses.replace(POLICY, products=())
    with pytest.raises(NoticeRejected) as caught:
        check(notice(), policy=nothing)
    assert caught.value.code == ErrorCode.WRONG_PRODUCT


def test_versions_are_ordered_per_product() -> None:
    # "tools" 0.1.0 is not a downgrade of "app" 1.0.0: another product's version line.
    tools = notice("0.1.0", manifest_changes={"name": "tools"})
    assert check(tools) == Verdict.START
    # ...and "app" 1.0.0 installed does not make "tools" 1.0.0 "already installed".
    assert check(notice("1.0.0", manifest_changes={"name": "tools"})) == Verdict.START
    assert check(notice("0.9.0"), installed=Installed("tools", "5.0.0")) == Verdict.START
    assert code_of(notice("0.9.0"), installed=APP_1) == ErrorCode.DOWNGRADE_REFUSED


# --- freeze: old releases, and approvals that name where they come from and expire --------


def test_a_release_older_than_the_configured_age_needs_an_approval() -> None:
    old = {"created_at": (NOW - dt.timedelta(days=400)).isoformat()}
    stale = notice("2.0.0", manifest_changes=old)
    assert code_of(stale) == ErrorCode.RELEASE_TOO_OLD
    approval = RollbackApproval.for_manifest(
        stale.manifest, from_version="1.0.0", created_at=NOW, valid_for=dt.timedelta(days=1)
    )
    assert check(
        notice("2.0.0", manifest_changes=old, rollback=sign_rollback(approval, RELEASE_KEY))
    ) == (Verdict.START)
    no_limit = dataclasses.replace(POLICY, max_release_age=None)
    assert check(stale, policy=no_limit) == Verdict.START


def approval_for(n: Notice, from_version: str = "1.0.0", **timing: Any) -> Any:
    approval = RollbackApproval.for_manifest(
        n.manifest,
        from_version=from_version,
        created_at=timing.get("created_at", NOW - dt.timedelta(hours=1)),
        valid_for=timing.get("valid_for", dt.timedelta(days=7)),
    )
    return sign_rollback(approval, timing.get("key", RELEASE_KEY))


def test_downgrade_needs_an_approval_for_exactly_that_artefact_and_version() -> None:
    older = notice("0.9.0")
    assert code_of(older) == ErrorCode.DOWNGRADE_REFUSED
    assert code_of(notice("1.0.0-rc.1")) == ErrorCode.DOWNGRADE_REFUSED  # pre-release < release
    assert check(notice("0.9.0", rollback=approval_for(older))) == Verdict.START
    refused = {
        "another key": approval_for(older, key=Ed25519PrivateKey.generate()),
        "from another version": approval_for(older, from_version="1.0.1"),
        "expired": approval_for(older, valid_for=dt.timedelta(minutes=30)),
        "another artefact": approval_for(notice("0.8.0")),
        "another digest": approval_for(notice("0.9.0", manifest_changes={"sha256": "c" * 64})),
    }
    for why, approval in refused.items():
        assert code_of(notice("0.9.0", rollback=approval)) == ErrorCode.DOWNGRADE_REFUSED, why


def test_the_installed_record_round_trips(tmp_path: Any) -> None:
    path = tmp_path / "installed.json"
    assert load_installed(path) is None
    save_installed(path, APP_1)
    assert load_installed(path) == APP_1
    path.write_text("{broken")
    assert load_installed(path) is None


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
