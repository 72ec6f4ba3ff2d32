"""NoticeTemplate: every notice it fills in is byte for byte the one `Notice.signed_payload`
makes, whatever the shared fields hold, and it refuses per-device values canonical JSON would."""

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_protocol.canonical import NotCanonicalisable
from kernex_protocol.manifest import (
    ReleaseManifest,
    RollbackApproval,
    key_id,
    sign,
    sign_rollback,
)
from kernex_protocol.notice_template import NoticeTemplate
from kernex_protocol.payloads import Notice

RELEASE_KEY = Ed25519PrivateKey.generate()
NOTICE_KEY = Ed25519PrivateKey.generate()
KID = key_id(NOTICE_KEY.public_key())
MANIFEST = ReleaseManifest("app", "1.2.3", "gw", "c" * 64, 10, "2026-11-28T00:00:00+00:00")
ROLLBACK = sign_rollback(
    RollbackApproval.for_manifest(
        MANIFEST,
        from_version="9.9.9",
        created_at=dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
        valid_for=dt.timedelta(days=7),
    ),
    RELEASE_KEY,
)

SHARED: list[dict[str, Any]] = [
    {"issued_at": "2026-12-05T09:00:00+00:00"},  # no URL, no expiry: those keys are left out
    {
        "issued_at": "2026-12-05T09:00:00+00:00",
        "expires_at": "2026-12-06T09:00:00+00:00",
        "url": 'https://s3.example/bundles/app-1.2.3.tar?X-Amz-Signature=ab%2Fcd&x="q"',
        "url_expires_at": "2026-12-05T10:00:00+00:00",
    },
    {"issued_at": "t", "expires_at": "u", "url": "https://s3.example/b", "rollback": ROLLBACK},
    # Non-ASCII in a shared field: the claims keep it as UTF-8, the wire form escapes it.
    {"issued_at": "2026-12-05T09:00:00+00:00", "url": "https://s3.example/bündel/ä"},
]
DEVICES = [
    ("dep-1", "gw-0001", 1, 0),
    ("7c9e6679-7425-40de-944b-e07fc1f90ae7", "a.b_c-d", 7, 300),
    ("d", "x" * 64, 12345, 1),
]


@pytest.mark.parametrize("shared", SHARED, ids=range(len(SHARED)))
def test_each_notice_is_the_one_signed_payload_makes(shared: dict[str, Any]) -> None:
    release = sign(MANIFEST, RELEASE_KEY)
    template = NoticeTemplate(release=release, **shared)
    for deployment_id, device_id, attempt, delay in DEVICES:
        filled = template.signed_payload(
            NOTICE_KEY,
            kid=KID,
            deployment_id=deployment_id,
            device_id=device_id,
            attempt=attempt,
            start_delay_s=delay,
        )
        reference = Notice(
            deployment_id,
            device_id,
            release,
            attempt=attempt,
            start_delay_s=delay,
            **shared,
        ).signed_payload(NOTICE_KEY, kid=KID)
        assert filled == reference  # Ed25519 is deterministic: same claims, same bytes
        parsed = Notice.parse(filled)
        assert parsed.verify({KID: NOTICE_KEY.public_key()}) == KID
        assert (parsed.device_id, parsed.attempt) == (device_id, attempt)


@pytest.mark.parametrize(
    "wrong",
    [{"attempt": True}, {"attempt": 1.0}, {"start_delay_s": "0"}, {"device_id": 7}],
    ids=["bool", "float", "text-for-int", "int-for-text"],
)
def test_values_canonical_json_refuses_are_refused(wrong: dict[str, Any]) -> None:
    template = NoticeTemplate(release=sign(MANIFEST, RELEASE_KEY), issued_at="t")
    values: dict[str, Any] = {"deployment_id": "d", "device_id": "gw", "attempt": 1} | wrong
    with pytest.raises(NotCanonicalisable):
        template.signed_payload(NOTICE_KEY, kid=KID, **values)


def test_a_shared_field_that_looks_like_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="slot marker"):
        NoticeTemplate(release=sign(MANIFEST, RELEASE_KEY), issued_at="\x00slot:attempt\x00")
