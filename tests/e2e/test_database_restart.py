"""PostgreSQL restarted under heartbeat ingest, on a server of the test's own: the backend
process rides it out without a restart, becomes ready again by itself, and every heartbeat a
device sent meanwhile is either stored or counted as dropped."""

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_devstack.broker import EmbeddedBroker
from kernex_devstack.postgres import EmbeddedPostgres
from kernex_devstack.s3 import EmbeddedS3
from tests.e2e.fleet import BIN, Fleet, eventually, logs_of
from tests.e2e.raw_device import Device

pytestmark = pytest.mark.e2e

DROPPED = (
    "heartbeats.dropped_backpressure",
    "heartbeats.dropped_retries",
    "heartbeats.dropped_refused",
)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "postgres", durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fleet_on_own_database(
    tmp_path: Path, own_postgres: EmbeddedPostgres, broker: EmbeddedBroker, s3_server: EmbeddedS3
) -> Iterator[Fleet]:
    url = own_postgres.url()
    subprocess.run(
        [str(BIN / "kernex-backend"), "migrate"],
        env={**os.environ, "KERNEX_ENVIRONMENT": "development", "KERNEX_DATABASE_URL": url},
        capture_output=True,
        check=True,
    )
    running = Fleet(
        root=tmp_path / "fleet",
        database_url=url,
        broker=broker,
        s3=s3_server,
        release_key=Ed25519PrivateKey.generate(),
    )
    yield running
    running.stop()


@pytest.mark.reliability(
    "Faults",
    "PostgreSQL restarted under heartbeat ingest",
    "the backend recovers without a restart; every heartbeat sent is stored or counted as dropped",
)
def test_the_backend_rides_out_a_database_restart(
    fleet_on_own_database: Fleet, own_postgres: EmbeddedPostgres, figures: dict[str, Any]
) -> None:
    fleet = fleet_on_own_database
    fleet.base_env["KERNEX_MQTT__HEARTBEAT_BUDGET_PER_S"] = "100"
    api = fleet.start_api()
    assert api.process is not None
    device = Device(fleet, "steady")

    def beat_for(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            device.heartbeat()
            time.sleep(0.05)

    def stored() -> int:
        with fleet.api as client:
            rows = client.get(f"/devices/{device.id}/heartbeats", params={"limit": 500})
        return len(rows.json()["data"]) if rows.status_code == 200 else -1

    def counters() -> dict[str, int]:
        with fleet.api as client:
            return dict(client.get("/mqtt/status").json()["counters"])

    beat_for(2)
    eventually(lambda: stored() > 0, 10, "heartbeats stored before", logs_of(api))
    own_postgres.stop()  # a fast shutdown: every connection dropped
    down_at = time.monotonic()
    beat_for(4)  # the ingest meets no database
    own_postgres.start()  # the same data, on the same port
    down_s = time.monotonic() - down_at
    beat_for(2)

    def ready() -> bool:
        with fleet.api as client:
            return client.get("/ready").status_code == 200

    eventually(ready, 30, "ready again", logs_of(api))
    sent = device.seq

    def accounted() -> bool:
        dropped = sum(counters().get(name, 0) for name in DROPPED)
        return stored() + dropped == sent

    eventually(accounted, 30, "every heartbeat stored or counted", logs_of(api))
    assert api.process.poll() is None, "the backend process exited"
    assert '"backend_started"' in api.log() and api.log().count('"backend_started"') == 1
    lost = sent - stored()
    figures["database down (s)"] = round(down_s, 1)
    figures["heartbeats sent"] = sent
    figures["stored"] = sent - lost
    figures["dropped, counted"] = lost
