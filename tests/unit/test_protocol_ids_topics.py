"""Device ID rules and topic building/parsing."""

import re

import pytest

from kernex_protocol.canonical import NotCanonicalisable, canonical_json
from kernex_protocol.ids import InvalidDeviceId, is_valid_device_id, validate_device_id
from kernex_protocol.limits import BROKER_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES
from kernex_protocol.topics import (
    CHANNELS,
    Channel,
    Direction,
    parse_topic,
    subscription_for_all,
    topic_for,
)

BAD_IDS = ["a/b", "a+b", "#", "$SYS", "", "x" * 65, "a\x00b", "a b", "-a", ".a", "_a", "a\n", "é"]


@pytest.mark.parametrize("device_id", BAD_IDS)
def test_bad_ids_are_refused_with_a_reason(device_id: str) -> None:
    assert not is_valid_device_id(device_id)
    with pytest.raises(InvalidDeviceId, match="invalid device ID: "):
        validate_device_id(device_id)


@pytest.mark.parametrize("device_id", ["a", "0", "dev-1", "Dev_1.2", "x" * 64])
def test_good_ids_pass_unchanged(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id


def test_reasons_are_specific() -> None:
    with pytest.raises(InvalidDeviceId, match="empty"):
        validate_device_id("")
    with pytest.raises(InvalidDeviceId, match="longer than 64"):
        validate_device_id("x" * 65)
    with pytest.raises(InvalidDeviceId, match="'/'"):
        validate_device_id("a/b")
    with pytest.raises(InvalidDeviceId, match="start with a letter or a digit"):
        validate_device_id("-a")


def test_topics_round_trip() -> None:
    for channel in Channel:
        topic = topic_for("dev-1", channel)
        assert topic == f"kernex/v1/devices/dev-1/{channel.value}"
        parsed = parse_topic(topic)
        assert parsed is not None
        assert (parsed.device_id, parsed.channel) == ("dev-1", channel)


def test_topic_builder_refuses_bad_ids() -> None:
    with pytest.raises(InvalidDeviceId):
        topic_for("+", Channel.HEARTBEAT)


@pytest.mark.parametrize(
    "topic",
    [
        "kernex/v1/devices/dev-1/unknown",
        "kernex/v1/devices/dev-1",
        "kernex/v1/devices/+/heartbeat",
        "kernex/v2/devices/dev-1/heartbeat",
        "kernex/v1/devices/dev-1/heartbeat/extra",
        "other/topic",
        "",
    ],
)
def test_foreign_topics_do_not_parse(topic: str) -> None:
    assert parse_topic(topic) is None


def test_channel_table_is_complete_and_consistent() -> None:
    assert set(CHANNELS) == set(Channel)
    assert set(MAX_PAYLOAD_BYTES) == set(Channel)
    assert max(MAX_PAYLOAD_BYTES.values()) == BROKER_MAX_PAYLOAD_BYTES
    # Retained messages are the ones a (re)connecting party must find waiting for it.
    assert {c for c, s in CHANNELS.items() if s.retain} == {Channel.PRESENCE, Channel.DEPLOYMENT}
    assert CHANNELS[Channel.DEPLOYMENT].direction is Direction.CLOUD_TO_DEVICE
    assert subscription_for_all(Channel.PROGRESS) == "kernex/v1/devices/+/progress"


def test_canonical_json_is_stable() -> None:
    a = canonical_json({"b": 1, "a": {"y": [1, "ü"], "x": None}})
    b = canonical_json({"a": {"x": None, "y": [1, "ü"]}, "b": 1})
    assert a == b == '{"a":{"x":null,"y":[1,"ü"]},"b":1}'.encode()


@pytest.mark.parametrize("value", [1.5, float("nan"), {1: "x"}, b"bytes", object()])
def test_canonical_json_refuses_ambiguous_values(value: object) -> None:
    with pytest.raises(NotCanonicalisable):
        canonical_json({"v": value})


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"a": [1, "x", {"b": 1.5}]}, "$.a[2].b"),
        ({"a": {"b": [None, True, b"raw"]}}, "$.a.b[2]"),
        ({"a": {"b": {"c": {2: 1}}}}, "$.a.b.c"),
    ],
)
def test_a_refused_value_deep_in_a_document_is_named_by_its_path(
    document: dict[str, object], path: str
) -> None:
    with pytest.raises(NotCanonicalisable, match=rf"^{re.escape(path)}: "):
        canonical_json(document)


def test_values_of_subclassed_json_types_are_accepted_as_their_base() -> None:
    assert canonical_json({"c": Channel.HEARTBEAT, "n": [Channel.PROGRESS]}) == (
        b'{"c":"heartbeat","n":["progress"]}'
    )
