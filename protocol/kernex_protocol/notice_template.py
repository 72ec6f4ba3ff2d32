"""Signed notices for many devices at once, encoded once and filled in per device.

The notices of one batch differ only in their deployment, device, attempt and start delay (and
each one's signature); everything else, the signed release above all, is the same. A template
encodes the claims' canonical JSON and the wire form once, with a marked slot for each of those
values, and each notice is its device's values written into the slots: byte for byte what
`Notice.signed_payload` gives (the tests compare the two), without encoding the whole notice
twice per device. The agent never imports this module: devices only read notices.
"""

import base64
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from kernex_protocol.canonical import NotCanonicalisable, canonical_json
from kernex_protocol.manifest import SignedRelease, SignedRollback
from kernex_protocol.payloads import Notice, _encode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# A slot's marker: a JSON string no real value can be (NUL is refused in every identifier).
_MARK: Final = "\x00slot:{}\x00"
_SLOT_RE: Final = re.compile(rb'"\\u0000slot:(\w+)\\u0000"')
_PER_DEVICE: Final = ("deployment_id", "device_id", "attempt", "start_delay_s")


def _text(value: object, ensure_ascii: bool) -> bytes:
    if type(value) is not str:
        raise NotCanonicalisable(f"expected a string, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=ensure_ascii).encode()


def _integer(value: object, _ensure_ascii: bool) -> bytes:
    if type(value) is not int:  # not bool, not float: what canonical JSON allows
        raise NotCanonicalisable(f"expected an integer, got {type(value).__name__}")
    return str(value).encode()


_ENCODERS: Final[dict[str, Callable[[object, bool], bytes]]] = {
    "deployment_id": _text,
    "device_id": _text,
    "attempt": _integer,
    "start_delay_s": _integer,
    "signature": _text,
    "key_id": _text,
}


class _Filled:
    """One encoding split at its slots: literal bytes and slot names in turn."""

    def __init__(self, encoded: bytes, *, ensure_ascii: bool) -> None:
        parts = _SLOT_RE.split(encoded)
        self._literals = parts[0::2]
        self.slots = [name.decode() for name in parts[1::2]]
        self._ensure_ascii = ensure_ascii

    def fill(self, values: dict[str, object]) -> bytes:
        out = [self._literals[0]]
        for name, literal in zip(self.slots, self._literals[1:], strict=True):
            out.append(_ENCODERS[name](values[name], self._ensure_ascii))
            out.append(literal)
        return b"".join(out)


class NoticeTemplate:
    """The shared part of a batch's notices; `signed_payload` makes one device's."""

    def __init__(
        self,
        *,
        release: SignedRelease,
        issued_at: str,
        expires_at: str | None = None,
        url: str | None = None,
        url_expires_at: str | None = None,
        rollback: SignedRollback | None = None,
    ) -> None:
        probe = Notice(
            deployment_id="",
            device_id="",
            release=release,
            issued_at=issued_at,
            expires_at=expires_at,
            url=url,
            url_expires_at=url_expires_at,
            rollback=rollback,
        )
        marks: dict[str, Any] = {name: _MARK.format(name) for name in _PER_DEVICE}
        # The shared values pass canonical JSON's checks here, once; the slots' at each fill.
        claims = canonical_json(probe.claims_document() | marks)
        wire = _encode(
            probe.wire_document(_MARK.format("signature"), _MARK.format("key_id")) | marks
        )
        self._claims = _Filled(claims, ensure_ascii=False)  # as canonical_json encodes
        self._wire = _Filled(wire, ensure_ascii=True)  # as the wire form encodes
        if sorted(self._claims.slots) != sorted(_PER_DEVICE) or sorted(self._wire.slots) != sorted(
            (*_PER_DEVICE, "signature", "key_id")
        ):
            raise ValueError("a notice's shared fields hold a slot marker")

    def signed_payload(
        self,
        key: "Ed25519PrivateKey",
        *,
        kid: str,
        deployment_id: str,
        device_id: str,
        attempt: int = 1,
        start_delay_s: int = 0,
    ) -> bytes:
        """The wire form of this device's notice, signed with `key` (whose id is `kid`)."""
        values: dict[str, object] = {
            "deployment_id": deployment_id,
            "device_id": device_id,
            "attempt": attempt,
            "start_delay_s": start_delay_s,
        }
        values["signature"] = base64.b64encode(key.sign(self._claims.fill(values))).decode()
        values["key_id"] = kid
        return self._wire.fill(values)
