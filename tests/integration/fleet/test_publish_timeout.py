"""Publishes the broker never acknowledges end instead of holding the notifier: against a broker
of its own, frozen (SIGSTOP) with the connection still open, so that nothing but the bridge's
timeout can end the wait, or killed, so that the lost connection must end it."""

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernex_backend.core.messaging import PublishFailed
from kernex_backend.mqtt import bridge as bridge_module
from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.topics import Channel
from tests.integration.fleet.conftest import bridge_settings, connected_bridge

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5


@contextlib.contextmanager
def frozen(broker: EmbeddedBroker) -> Iterator[None]:
    pid = int(broker.layout.pid_file.read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def batch(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{i}", b"") for i in range(count)]


async def test_an_unacknowledged_publish_fails_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge_module, "_PUBLISH_TIMEOUT_S", TIMEOUT_S)
    with EmbeddedBroker(tmp_path / "broker") as broker:
        async with connected_bridge(broker, bridge_settings(broker)) as bridge:
            # Acknowledged while the broker runs: the timeout does not cut a normal publish.
            await bridge.publish_to("timeout-dev", Channel.DEPLOYMENT, b"")
            with frozen(broker):
                started = time.monotonic()
                with pytest.raises(PublishFailed, match=r"no acknowledgement within 0\.5 s"):
                    await asyncio.wait_for(
                        bridge.publish_to("timeout-dev", Channel.DEPLOYMENT, b""), 10
                    )
                waited = time.monotonic() - started
    assert TIMEOUT_S <= waited < TIMEOUT_S + 2


async def test_a_batch_ends_when_no_acknowledgement_comes_for_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge_module, "_PUBLISH_TIMEOUT_S", TIMEOUT_S)
    with EmbeddedBroker(tmp_path / "broker") as broker:
        async with connected_bridge(broker, bridge_settings(broker)) as bridge:
            # More than the in-flight window: paho sends the rest as acknowledgements come.
            assert await bridge.publish_many(Channel.DEPLOYMENT, batch("ok", 300)) == [True] * 300
            with frozen(broker):
                started = time.monotonic()
                outcome = await asyncio.wait_for(
                    bridge.publish_many(Channel.DEPLOYMENT, batch("stuck", 5)), 10
                )
                waited = time.monotonic() - started
    assert outcome == [False] * 5
    assert TIMEOUT_S <= waited < TIMEOUT_S + 2


async def test_a_batch_ends_when_the_connection_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long stall limit: only the lost connection can end this batch in time.
    monkeypatch.setattr(bridge_module, "_PUBLISH_TIMEOUT_S", 60.0)
    with EmbeddedBroker(tmp_path / "broker") as broker:
        async with connected_bridge(broker, bridge_settings(broker)) as bridge:
            with frozen(broker):
                pending = asyncio.create_task(
                    bridge.publish_many(Channel.DEPLOYMENT, batch("lost", 100))
                )
                await asyncio.sleep(0.2)
                assert not pending.done()
                started = time.monotonic()
                broker.kill()
                outcome = await asyncio.wait_for(pending, 10)
                waited = time.monotonic() - started
            assert not bridge.connected.is_set()
            assert await bridge.publish_many(Channel.DEPLOYMENT, batch("after", 2)) == [
                False,
                False,
            ]
    assert outcome == [False] * 100
    assert waited < 5
