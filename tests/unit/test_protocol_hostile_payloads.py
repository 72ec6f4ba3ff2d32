"""Payloads a hostile or broken device sends: each is refused with PayloadInvalid, never with
another exception, and nothing that parses holds a value PostgreSQL cannot store."""

import json
from typing import Any

import pytest

from kernex_protocol.limits import INT_LIMITS, MAX_CONTAINERS
from kernex_protocol.payloads import (
    Heartbeat,
    PayloadInvalid,
    Presence,
    Progress,
    UrlRequest,
)

HEARTBEAT = {"v": 1, "seq": 1, "session": 1, "sent_at": "t", "uptime_s": 5, "agent_version": "a"}
PRESENCE = {"v": 1, "online": True, "session": 3}
PROGRESS = {"v": 1, "deployment_id": "d", "state": "downloading", "seq": 1, "sent_at": "t"}
URL_REQUEST = {"v": 1, "request_id": "r", "deployment_id": "d"}


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


HOSTILE: dict[str, tuple[Any, bytes]] = {
    # integers beyond the column or the meaning
    "heartbeat seq 2^63": (Heartbeat, _with(HEARTBEAT, seq=2**63)),
    "heartbeat seq 2^64": (Heartbeat, _with(HEARTBEAT, seq=2**64)),
    "heartbeat session 2^40": (Heartbeat, _with(HEARTBEAT, session=2**40)),
    "heartbeat uptime 2^62": (Heartbeat, _with(HEARTBEAT, uptime_s=2**62)),
    "heartbeat metric 2^60": (Heartbeat, _with(HEARTBEAT, metrics={"m": 2**60})),
    "heartbeat metric negative huge": (Heartbeat, _with(HEARTBEAT, metrics={"m": -(2**60)})),
    "presence session 2^63": (Presence, _with(PRESENCE, session=2**63)),
    "progress seq 2^63": (Progress, _with(PROGRESS, seq=2**63)),
    "progress percent -1": (Progress, _with(PROGRESS, percent=-1)),
    "a 5000-digit integer": (Heartbeat, b'{"v":1,"seq":' + b"9" * 5000 + b"}"),
    # strings the database refuses
    "NUL in agent_version": (Heartbeat, _with(HEARTBEAT, agent_version="1.0\x00")),
    "NUL in sent_at": (Heartbeat, _with(HEARTBEAT, sent_at="\x00")),
    "NUL in a metric name": (Heartbeat, _with(HEARTBEAT, metrics={"a\x00": 1})),
    "NUL in presence version": (Presence, _with(PRESENCE, installed_version="\x00")),
    "NUL in error detail": (
        Progress,
        _with(PROGRESS, state="failed", error={"code": "install_failed", "detail": "x\x00y"}),
    ),
    "lone surrogate in agent_version": (
        Heartbeat,
        b'{"v":1,"seq":1,"session":1,"sent_at":"t","uptime_s":1,"agent_version":"\\ud800"}',
    ),
    "invalid UTF-8 bytes": (Heartbeat, b'{"v":1,"agent_version":"\xff\xfe"}'),
    # versions that are not the integer 1
    "v true": (Heartbeat, _with(HEARTBEAT, v=True)),
    "v 1.0": (Heartbeat, _with(HEARTBEAT, v=1.0)),
    "v string": (Presence, _with(PRESENCE, v="1")),
    # structure
    "nested 2000 deep": (Heartbeat, b'{"v":1,"metrics":' + b"[" * 2000 + b"]" * 2000 + b"}"),
    "nested objects": (Presence, b'{"v":1,"x":' + b'{"a":' * 400 + b"1" + b"}" * 400 + b"}"),
    "many small arrays": (Progress, b'{"v":1,"x":[' + b"[]," * 200 + b"[]]}"),
    "NaN": (Heartbeat, b'{"v":1,"seq":NaN}'),
    "Infinity in metrics": (Heartbeat, b'{"v":1,"metrics":{"m":Infinity}}'),
    "a bare array": (UrlRequest, b"[1,2,3]"),
}


@pytest.mark.parametrize(("cls", "raw"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_payloads_are_refused_as_invalid(cls: Any, raw: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        cls.parse(raw)


def test_the_bounds_themselves_are_accepted() -> None:
    top = INT_LIMITS["heartbeat.seq"].high
    assert Heartbeat.parse(_with(HEARTBEAT, seq=top)).seq == top
    session = INT_LIMITS["session"].high
    assert Presence.parse(_with(PRESENCE, session=session)).session == session
    assert Progress.parse(_with(PROGRESS, percent=100)).percent == 100


def test_a_payload_at_the_container_limit_still_parses() -> None:
    metrics = {f"m{i}": i for i in range(3)}
    raw = _with(HEARTBEAT, metrics=metrics, pad=[[] for _ in range(MAX_CONTAINERS - 3)])
    assert raw.count(b"[") + raw.count(b"{") == MAX_CONTAINERS
    assert Heartbeat.parse(raw).metrics == metrics
