"""Payloads of every channel: round trips, and what a receiver refuses."""

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_protocol.limits import MAX_PAYLOAD_BYTES
from kernex_protocol.manifest import (
    ManifestInvalid,
    ReleaseManifest,
    RollbackApproval,
    SignatureInvalid,
    SignedRollback,
    key_id,
    sign,
    sign_rollback,
    verify_rollback,
)
from kernex_protocol.payloads import (
    ErrorCode,
    Heartbeat,
    Notice,
    PayloadInvalid,
    Presence,
    Progress,
    ProgressError,
    ProgressState,
    UrlRequest,
    UrlResponse,
)
from kernex_protocol.topics import Channel

KEY = Ed25519PrivateKey.generate()
MANIFEST = ReleaseManifest("app", "1.2.3", "gw", "c" * 64, 10, "2026-11-28T00:00:00+00:00")

EXAMPLES = [
    Presence(
        online=True, session=7, agent_version="0.1.0", installed_version="1.0.0", cert_serial="ab"
    ),
    Presence(online=False, session=7, reason="lost"),
    Heartbeat(
        seq=3,
        session=7,
        sent_at="2026-11-28T00:00:00+00:00",
        uptime_s=99,
        agent_version="0.1.0",
        metrics={"load1_milli": 250},
    ),
    Heartbeat(
        seq=4,
        session=7,
        sent_at="2026-11-28T00:00:00+00:00",
        uptime_s=99,
        agent_version="0.1.0",
        update_state="downloading",
        last_error="health_check_failed",
    ),
    Progress("dep-1", ProgressState.DOWNLOADING, seq=4, sent_at="t", version="1.2.3", percent=40),
    Progress(
        "dep-1",
        ProgressState.FAILED,
        seq=5,
        sent_at="t",
        error=ProgressError(ErrorCode.DIGEST_MISMATCH, "sha differs"),
    ),
    UrlRequest("req-1", "dep-1"),
    UrlResponse("req-1", "dep-1", url="https://s3.example/b?X-Amz-Signature=x", expires_at="t"),
    UrlResponse("req-1", "dep-1", error="deployment_not_active"),
    Notice(
        "dep-1",
        "dev-1",
        sign(MANIFEST, KEY),
        issued_at="2026-11-28T00:00:00+00:00",
        url="https://s3.example/b",
    ),
]


@pytest.mark.parametrize("payload", EXAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip(payload: object) -> None:
    raw = payload.to_payload()  # type: ignore[attr-defined]
    assert json.loads(raw)["v"] == 1
    assert type(payload).parse(raw) == payload  # type: ignore[attr-defined]


def approval_of(manifest: ReleaseManifest = MANIFEST) -> RollbackApproval:
    return RollbackApproval.for_manifest(
        manifest,
        from_version="9.9.9",
        created_at=dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
        valid_for=dt.timedelta(days=7),
    )


def test_notice_with_rollback_and_signature_round_trips() -> None:
    notice_key = Ed25519PrivateKey.generate()
    notice = Notice(
        "dep-2",
        "dev-1",
        sign(MANIFEST, KEY),
        issued_at="t",
        expires_at="2026-11-28T01:00:00+00:00",
        rollback=sign_rollback(approval_of(), KEY),
    ).signed_with(notice_key)
    parsed = Notice.parse(notice.to_payload())
    assert parsed == notice
    assert parsed.rollback is not None
    assert verify_rollback(parsed.rollback, {key_id(KEY.public_key()): KEY.public_key()})
    assert parsed.rollback.approval.permits(MANIFEST, installed_version="9.9.9")
    assert not parsed.rollback.approval.permits(MANIFEST, installed_version="9.9.8")
    assert parsed.verify({key_id(notice_key.public_key()): notice_key.public_key()})


def test_a_notice_signed_straight_to_the_wire_is_the_signed_notices_wire_form() -> None:
    notice_key = Ed25519PrivateKey.generate()
    kid = key_id(notice_key.public_key())
    notice = Notice("dep-3", "dev-2", sign(MANIFEST, KEY), issued_at="t", expires_at="u")
    raw = notice.signed_payload(notice_key, kid=kid)
    assert raw == notice.signed_with(notice_key, kid=kid).to_payload()  # Ed25519 is deterministic
    assert Notice.parse(raw).verify({kid: notice_key.public_key()}) == kid
    assert notice.signature is None  # the notice itself is not changed


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        (Presence, b"\xff", "UTF-8 JSON"),
        (Presence, b"[1]", "JSON object"),
        (Presence, b'{"v": 2, "online": true, "session": 1}', "version"),
        (Presence, b'{"v": 1, "online": "yes", "session": 1}', "online"),
        (Presence, b'{"v": 1, "online": true, "session": -1}', "session must be 0-"),
        (Presence, b'{"v": 1, "online": true, "session": true}', "session"),
        (Presence, b'{"v": 1, "online": true}', "session"),
        (
            Heartbeat,
            b'{"v":1,"seq":1,"session":1,"sent_at":"t","uptime_s":1,"agent_version":"a",'
            b'"metrics":{"load":0.5}}',
            "metrics",
        ),
        (
            Progress,
            b'{"v":1,"deployment_id":"d","state":"exploded","seq":1,"sent_at":"t"}',
            "state",
        ),
        (
            Progress,
            b'{"v":1,"deployment_id":"../d","state":"failed","seq":1,"sent_at":"t"}',
            "deployment_id",
        ),
        (
            Progress,
            b'{"v":1,"deployment_id":"d","state":"downloading","seq":1,"sent_at":"t",'
            b'"percent":101}',
            "percent",
        ),
        (
            Progress,
            b'{"v":1,"deployment_id":"d","state":"failed","seq":1,"sent_at":"t",'
            b'"error":{"code":"oops"}}',
            "error.code",
        ),
        (UrlRequest, b'{"v":1,"request_id":"r/1","deployment_id":"d"}', "request_id"),
        (UrlResponse, b'{"v":1,"request_id":"r","deployment_id":"d"}', "either url or error"),
        (
            UrlResponse,
            b'{"v":1,"request_id":"r","deployment_id":"d","url":"file:///etc/passwd"}',
            "http",
        ),
        (
            Notice,
            b'{"v":1,"deployment_id":"d","device_id":"a/b","release":{},"issued_at":"t"}',
            "manifest",
        ),
    ],
)
def test_malformed_payloads_are_refused_with_the_field_named(
    cls: Any, raw: bytes, message: str
) -> None:
    with pytest.raises(PayloadInvalid, match=message):
        cls.parse(raw)


def test_notice_checks_device_id_and_url_scheme() -> None:
    good = json.loads(EXAMPLES[-1].to_payload())  # type: ignore[attr-defined]
    for field, value, message in (
        ("device_id", "a+b", "device_id"),
        ("url", "ftp://x", "http"),
        ("rollback", {"approval": {}}, "approval"),
    ):
        with pytest.raises(PayloadInvalid, match=message):
            Notice.parse(json.dumps({**good, field: value}).encode())


@pytest.mark.parametrize("channel", list(Channel))
def test_oversized_payloads_are_refused_before_parsing(channel: Channel) -> None:
    parser: Any = {
        Channel.HEARTBEAT: Heartbeat,
        Channel.PRESENCE: Presence,
        Channel.PROGRESS: Progress,
        Channel.URL_REQUEST: UrlRequest,
        Channel.URL_RESPONSE: UrlResponse,
        Channel.DEPLOYMENT: Notice,
    }[channel]
    raw = b'{"v": 1, "pad": "' + b"x" * MAX_PAYLOAD_BYTES[channel] + b'"}'
    with pytest.raises(PayloadInvalid, match="exceeds"):
        parser.parse(raw)


def test_rollback_approval_signature_and_shape() -> None:
    approval = approval_of()
    signed = sign_rollback(approval, KEY)
    trusted = {key_id(KEY.public_key()): KEY.public_key()}
    assert verify_rollback(signed, trusted) == signed.key_id
    forged = SignedRollback(
        dataclasses.replace(approval, from_version="0.0.1"),
        signed.signature,
        signed.key_id,
    )
    with pytest.raises(SignatureInvalid):
        verify_rollback(forged, trusted)
    with pytest.raises(SignatureInvalid, match="unknown key"):
        verify_rollback(sign_rollback(approval, Ed25519PrivateKey.generate()), trusted)
    with pytest.raises(ManifestInvalid):
        dataclasses.replace(approval, version="not-semver")
    with pytest.raises(ManifestInvalid):
        dataclasses.replace(approval, expires_at="tomorrow")
    document = signed.to_document()
    document["approval"]["kind"] = "upgrade"
    with pytest.raises(ManifestInvalid, match="kind"):
        SignedRollback.from_document(document)


@pytest.mark.parametrize("bad", ["Idle", "x" * 33, "rm -rf", "", "idle\u0000"])
def test_heartbeat_health_names_are_checked(bad: str) -> None:
    raw = json.dumps(
        {
            "v": 1,
            "seq": 1,
            "session": 1,
            "sent_at": "t",
            "uptime_s": 1,
            "agent_version": "a",
            "update_state": bad,
        }
    ).encode()
    with pytest.raises(PayloadInvalid, match="update_state"):
        Heartbeat.parse(raw)
