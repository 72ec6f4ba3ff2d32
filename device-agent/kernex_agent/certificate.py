"""The serial number of the device's certificate, read from its DER encoding.

The agent reports the serial in every presence message. Reading it with `cryptography` would
load that library's bindings into every idle agent (about a third of its memory; they are
loaded when a notice is verified), so the few DER steps to the serial are taken here:
Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber
INTEGER, ... }, ... }. Nothing is trusted on the strength of it: the serial is a label for
operators; the broker verifies the certificate itself.
"""

import binascii
import re

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _INTEGER, _VERSION = 0x30, 0x02, 0xA0


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, where its content starts, its length) of the DER element at `at`."""
    if at + 2 > len(der):
        raise ValueError("the certificate is truncated")
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or at + count > len(der):
            raise ValueError("the certificate has an unsupported length")
        length = int.from_bytes(der[at : at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("the certificate is truncated")
    return tag, at, length


def serial_number(pem: bytes) -> int:
    """The serial number of the first certificate in `pem`; ValueError if there is none."""
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no PEM certificate")
    try:
        # base64.b64decode(..., validate=True) without loading base64 for every connection
        der = binascii.a2b_base64(b"".join(match.group(1).split()), strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"the certificate is not base64: {exc}") from None
    tag, at, _ = _element(der, 0)
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, at, _ = _element(der, at)  # tbsCertificate
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, start, length = _element(der, at)
    if tag == _VERSION:
        tag, start, length = _element(der, start + length)
    if tag != _INTEGER or length == 0:
        raise ValueError("the certificate has no serial number")
    return int.from_bytes(der[start : start + length], "big", signed=True)
