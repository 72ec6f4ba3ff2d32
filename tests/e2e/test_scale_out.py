"""Scale-out without loss: two backend replicas share the device subscriptions, and a heartbeat
stored by one is neither lost nor stored twice because the other was slow."""

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.e2e.fleet import Fleet, eventually, logs_of
from tests.e2e.raw_device import Device

pytestmark = pytest.mark.e2e


@pytest.mark.reliability(
    "Scale-out",
    "a replica stalled (SIGSTOP) for many heartbeat intervals",
    "every heartbeat stored exactly once",
)
def test_a_stalled_replica_loses_no_heartbeat_and_duplicates_none(
    fleet: Fleet, figures: dict[str, Any]
) -> None:
    # The device beats every 50 ms here, so a 2 s stall is many heartbeat intervals long.
    fleet.base_env["KERNEX_MQTT__HEARTBEAT_BUDGET_PER_S"] = "100"
    api = fleet.start_api()
    worker = fleet.start_worker("kernex-backend-stalls")
    eventually(lambda: '"mqtt_connected"' in worker.log(), what="worker connected")
    explain = logs_of(api, worker)
    device = Device(fleet, "split")

    def beat(count: int) -> None:
        for _ in range(count):
            device.heartbeat()
            time.sleep(0.05)

    beat(20)  # the broker deals these out to both replicas in turn
    eventually(lambda: len(device.stored_heartbeats()) == 20, 20, "first 20 stored", explain)
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        beat(20)  # the worker's share waits in its socket while the API stores newer ones
        # One of the last two went to the API, whichever way the broker dealt them.
        eventually(
            lambda: max(device.stored_heartbeats()) >= 39, 20, "newest stored by the API", explain
        )
        assert len(device.stored_heartbeats()) < 40, "the stalled worker took no share"
        time.sleep(2.0)
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    # Back, the worker writes heartbeats older than the newest: stored, each once.
    eventually(lambda: len(device.stored_heartbeats()) == 40, 20, "late ones stored", explain)
    time.sleep(1.0)  # nothing more arrives: no copy of any of them
    stored = Counter(device.stored_heartbeats())
    assert stored == Counter(range(1, 41))
    figures["heartbeats sent"] = 40
    figures["stored once each"] = len(stored)
    figures["lost or duplicated"] = 0
    beat(1)
    eventually(lambda: 41 in device.stored_heartbeats(), 20, "the next one stored", explain)
