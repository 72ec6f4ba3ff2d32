"""PostgreSQL failing under heartbeat ingest, on a server of the test's own: restarted, and
with its disk full. The API answers 503 with Retry-After while it cannot write, the backend
process rides it out without a restart, and every heartbeat a device sent meanwhile is either
stored or counted as dropped."""

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
from tests.conftest import Mount, fill
from tests.e2e.fleet import BIN, Fleet, eventually, logs_of
from tests.e2e.raw_device import Device

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
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


def fleet_on(server: EmbeddedPostgres, root: Path, broker: EmbeddedBroker, s3: EmbeddedS3) -> Fleet:
    """A fleet whose database is on `server`, migrated as `kernex-backend migrate` does."""
    url = server.url()
    subprocess.run(
        [str(BIN / "kernex-backend"), "migrate"],
        env={**os.environ, "KERNEX_ENVIRONMENT": "development", "KERNEX_DATABASE_URL": url},
        capture_output=True,
        check=True,
    )
    fleet = Fleet(
        root=root, database_url=url, broker=broker, s3=s3, release_key=Ed25519PrivateKey.generate()
    )
    fleet.base_env["KERNEX_MQTT__HEARTBEAT_BUDGET_PER_S"] = "100"
    return fleet


@pytest.fixture
def fleet_on_own_database(
    tmp_path: Path, own_postgres: EmbeddedPostgres, broker: EmbeddedBroker, s3_server: EmbeddedS3
) -> Iterator[Fleet]:
    running = fleet_on(own_postgres, tmp_path / "fleet", broker, s3_server)
    yield running
    running.stop()


class Ingest:
    """A device beating every 50 ms, and what became of its heartbeats."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.device = Device(fleet, "steady")

    def beat_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.device.heartbeat()
            time.sleep(0.05)

    def stored(self) -> int:
        with self.fleet.api as client:
            rows = client.get(f"/devices/{self.device.id}/heartbeats", params={"limit": 500})
        return len(rows.json()["data"]) if rows.status_code == 200 else -1

    def dropped(self) -> int:
        with self.fleet.api as client:
            counters = client.get("/mqtt/status").json()["counters"]
        return sum(counters.get(name, 0) for name in DROPPED)

    def accounted(self) -> bool:
        """Every heartbeat sent is stored or counted as dropped."""
        return self.stored() + self.dropped() == self.device.seq


def unavailable(answer: Any) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) > 0


def ready(fleet: Fleet) -> bool:
    with fleet.api as client:
        return client.get("/ready").status_code == 200


@pytest.mark.reliability(
    "Faults",
    "PostgreSQL restarted under heartbeat ingest",
    "the backend recovers without a restart; every heartbeat sent is stored or counted as dropped",
)
def test_the_backend_rides_out_a_database_restart(
    fleet_on_own_database: Fleet, own_postgres: EmbeddedPostgres, figures: dict[str, Any]
) -> None:
    fleet = fleet_on_own_database
    api = fleet.start_api()
    assert api.process is not None
    ingest = Ingest(fleet)
    ingest.beat_for(2)
    eventually(lambda: ingest.stored() > 0, 10, "heartbeats stored before", logs_of(api))
    own_postgres.stop()  # a fast shutdown: every connection dropped
    down_at = time.monotonic()
    ingest.beat_for(2)  # the ingest meets no database
    # The API says what it is: unavailable for now (503 with Retry-After), not a bug (500).
    with fleet.api as client:
        unavailable(client.get("/devices"))
    ingest.beat_for(2)
    own_postgres.start()  # the same data, on the same port
    down_s = time.monotonic() - down_at
    ingest.beat_for(2)
    eventually(lambda: ready(fleet), 30, "ready again", logs_of(api))
    eventually(ingest.accounted, 30, "every heartbeat stored or counted", logs_of(api))
    assert api.process.poll() is None, "the backend process exited"
    assert api.log().count('"backend_started"') == 1
    sent, stored = ingest.device.seq, ingest.stored()
    figures["database down (s)"] = round(down_s, 1)
    figures["heartbeats sent"] = sent
    figures["stored"] = stored
    figures["dropped, counted"] = sent - stored


@pytest.fixture
def postgres_on_a_small_disk(tmp_path: Path, small_disk: Mount) -> Iterator[EmbeddedPostgres]:
    disk = tmp_path / "database-disk"
    small_disk(disk, 192 * MIB)
    server = EmbeddedPostgres(disk, durable=False)
    server.start()
    yield server
    server.stop()


@pytest.mark.reliability(
    "Faults",
    "the database's disk full under ingest and API writes",
    "writes answered 503 with Retry-After, reads still served; once there is room again,"
    " every heartbeat sent is stored or counted as dropped, and writes succeed",
)
def test_a_full_database_disk_is_a_503_and_recovers(
    tmp_path: Path,
    postgres_on_a_small_disk: EmbeddedPostgres,
    broker: EmbeddedBroker,
    s3_server: EmbeddedS3,
    figures: dict[str, Any],
) -> None:
    fleet = fleet_on(postgres_on_a_small_disk, tmp_path / "fleet", broker, s3_server)
    try:
        api = fleet.start_api()
        ingest = Ingest(fleet)
        ingest.beat_for(2)
        eventually(lambda: ingest.stored() > 0, 10, "heartbeats stored before", logs_of(api))
        filler = fill(postgres_on_a_small_disk.state_dir)
        # Rows still fit in the pages the tables have; the first that needs a new page fails.
        ingest.beat_for(3)
        eventually(
            lambda: '"heartbeats_write_failed"' in api.log(), 20, "ingest meets the full disk"
        )
        answers: list[int] = []
        with fleet.api as client:
            for number in range(300):
                created = client.post(
                    "/devices", json={"id": f"full-{number}", "device_type": "gateway"}
                )
                answers.append(created.status_code)
                if created.status_code != 201:
                    unavailable(created)
                    break
            assert client.get("/devices").status_code == 200  # reads still served
        assert answers[-1] == 503, f"{len(answers)} devices created on a full disk"
        filler.unlink()
        ingest.beat_for(2)
        eventually(ingest.accounted, 30, "every heartbeat stored or counted", logs_of(api))
        with fleet.api as client:
            created = client.post("/devices", json={"id": "after-full", "device_type": "gateway"})
        assert created.status_code == 201, created.text
        figures["writes accepted before the first 503"] = len(answers) - 1
        assert api.process is not None and api.process.poll() is None
        sent, stored = ingest.device.seq, ingest.stored()
        figures["heartbeats sent"] = sent
        figures["stored"] = stored
        figures["dropped, counted"] = sent - stored
    finally:
        fleet.stop()
