"""A publish batch's outcome settles as soon as every message is acknowledged or refused: a
message paho never took (no connection, queue full) must not hold the batch until the stall
limit, which would stop the notifier for that long."""

import asyncio

from kernex_backend.mqtt.bridge import _Acks, _GatedClient


async def test_a_batch_paho_refuses_fails_at_once() -> None:
    # Never connected: paho refuses every QoS 1 publish (MQTT_ERR_NO_CONN).
    client = _GatedClient("127.0.0.1", port=1, gate=lambda topic, payload: True)
    acks = client.publish_many([("a/1", b"x"), ("a/2", b"y")], qos=1, retain=True)
    assert await asyncio.wait_for(acks.wait(stall_s=60), 1) == [False, False]


async def test_refused_and_acknowledged_messages_settle_a_batch_together() -> None:
    acks = _Acks(3)
    acks.refuse(0)
    acks.ack(2)
    waiting = asyncio.create_task(acks.wait(stall_s=60))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # message 1 is still in flight
    acks.ack(1)
    assert await asyncio.wait_for(waiting, 1) == [False, True, True]


async def test_an_acknowledgement_counts_once() -> None:
    acks = _Acks(2)
    acks.ack(0)
    acks.ack(0)
    waiting = asyncio.create_task(acks.wait(stall_s=60))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    acks.ack(1)
    assert await asyncio.wait_for(waiting, 1) == [True, True]
