"""End to end: real agents, real broker, real PostgreSQL, real S3, the backend over HTTP."""

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kernex_devstack.broker import EmbeddedBroker
from tests.e2e.fleet import BIN, Fleet, deployment_watcher, eventually, logs_of
from tests.integration.agent.harness import DEVICE_TYPE, AgentProcess, running_version

pytestmark = pytest.mark.e2e


def test_device_online_update_and_offline_through_the_api(fleet: Fleet) -> None:
    api_process = fleet.start_api()
    agent = fleet.add_device()
    device_id = agent.device_id  # type: ignore[attr-defined]
    agent.start()
    device = eventually(
        lambda: (d := fleet.device(device_id))["online"] and d["last_seen_at"] and d,
        what="device online with a heartbeat",
    )
    assert device["status"] == "active" and device["agent_version"]
    with fleet.api as api:
        beats = eventually(lambda: api.get(f"/devices/{device_id}/heartbeats").json()["data"])
        status = api.get("/mqtt/status").json()
    assert beats[0]["metrics"]["agent_version"] == device["agent_version"]
    assert status["connected"] and status["counters"]["heartbeats.stored"] >= 1

    bundle = fleet.upload("1.0.0")
    deployment = fleet.deploy(bundle, [device_id])
    execution = eventually(
        lambda: (e := fleet.executions(deployment)[device_id])["state"] == "succeeded" and e,
        what="execution succeeded",
        explain=logs_of(agent, api_process),
    )
    assert execution["device_state"] == "committed" and execution["progress"] == 100
    assert running_version(agent.install_root) == "1.0.0"
    eventually(lambda: fleet.device(device_id)["current_version"] == "1.0.0", what="version")
    with fleet.api as api:
        detail = api.get(f"/deployments/{deployment}").json()
    assert detail["status"] == "completed"
    assert detail["execution_counts"]["succeeded"] == 1

    # A clean stop says goodbye: offline at once, not after the sweeper's timeout.
    assert agent.terminate() == 0
    eventually(lambda: not fleet.device(device_id)["online"], timeout=10, what="offline")


@pytest.mark.reliability(
    "Faults",
    "a device offline past its download URL's expiry",
    "completes when back",
)
def test_offline_device_completes_when_back_even_after_its_url_expired(fleet: Fleet) -> None:
    fleet.base_env["KERNEX_STORAGE__URL_EXPIRY_S"] = "5"
    fleet.start_api()
    agent = fleet.add_device()
    device_id = agent.device_id  # type: ignore[attr-defined]
    deployment = fleet.deploy(fleet.upload("2.0.0"), [device_id])
    eventually(
        lambda: fleet.executions(deployment)[device_id]["state"] == "notified", what="notified"
    )
    time.sleep(6)  # the URL in the retained notice has expired
    agent.start()
    eventually(
        lambda: fleet.executions(deployment)[device_id]["state"] == "succeeded",
        what="execution succeeded",
    )
    agent.wait_log("download.url_refused", deployment_id=deployment)
    assert running_version(agent.install_root) == "2.0.0"


@pytest.mark.reliability(
    "Scale-out",
    "two backend replicas sharing device traffic",
    "each device notified once; every execution succeeds",
)
def test_two_replicas_share_device_traffic_and_notify_each_device_once(
    fleet: Fleet, broker: EmbeddedBroker
) -> None:
    api = fleet.start_api("kernex-backend")
    worker = fleet.start_worker("kernex-backend-2")
    watcher = deployment_watcher(broker, "kernex-watcher", fleet.root / "watcher")
    agents = [fleet.add_device() for _ in range(8)]
    for agent in agents:
        agent.start()
    ids = [a.device_id for a in agents]  # type: ignore[attr-defined]
    eventually(lambda: all(fleet.device(i)["online"] for i in ids), what="all online")
    # Both replicas connected (each re-publishes live notices when it connects: a repair that
    # devices absorb, since a notice they already handle is idempotent; not what is counted).
    eventually(lambda: '"mqtt_connected"' in worker.log(), what="worker connected")

    deployment = fleet.deploy(fleet.upload("3.0.0"), ids)
    eventually(
        lambda: all(e["state"] == "succeeded" for e in fleet.executions(deployment).values()),
        timeout=60,
        what="all succeeded",
    )
    notices: dict[str, int] = {}
    for message in watcher.drain(wait=1.0):
        if message.payload:
            device = message.topic.split("/")[3]
            notices[device] = notices.get(device, 0) + 1
    watcher.close()
    # Each device notified once, by one replica (retained notices of other tests' devices
    # on the shared broker are not ours to count).
    assert {d: n for d, n in notices.items() if d in ids} == dict.fromkeys(ids, 1)
    # Both replicas consumed device traffic (the broker splits the shared subscriptions).
    for process in (api, worker):
        log = process.log()
        assert '"device_presence"' in log or '"execution_finished"' in log, process.command
    published = sum(
        line.count('"notices_published"') for p in (api, worker) for line in p.log().splitlines()
    )
    assert published >= 1


@pytest.mark.reliability(
    "Faults",
    "the broker restarted without its retained store",
    "every live notice published again; the rollout completes",
)
def test_broker_losing_its_retained_store_gets_every_notice_back(
    fleet: Fleet, broker: EmbeddedBroker
) -> None:
    fleet.start_api()
    agent = fleet.add_device()
    device_id = agent.device_id  # type: ignore[attr-defined]
    deployment = fleet.deploy(fleet.upload("4.0.0"), [device_id])
    eventually(
        lambda: fleet.executions(deployment)[device_id]["state"] == "notified", what="notified"
    )
    # The broker restarts with its persistence gone: the retained notice with it.
    broker.stop()
    stores = list(broker.layout.data_dir.glob("*.db"))
    assert stores, "the broker saved no persistence file"
    for stored in stores:
        stored.unlink()
    broker.start()
    # The bridge reconnects and reconciles from PostgreSQL; the device then finds its notice.
    agent.start()
    eventually(
        lambda: fleet.executions(deployment)[device_id]["state"] == "succeeded",
        timeout=60,
        what="execution succeeded after the broker lost its store",
    )
    assert running_version(agent.install_root) == "4.0.0"


def test_a_new_deployment_is_notified_at_once_and_in_full(
    fleet: Fleet, broker: EmbeddedBroker
) -> None:
    # No periodic run would come in time: the API wakes the notifier when it commits a
    # deployment, and the notifier goes batch after batch (two notices each here) until none
    # is left.
    fleet.base_env["KERNEX_MQTT__NOTIFY_INTERVAL_S"] = "3600"
    fleet.base_env["KERNEX_MQTT__NOTIFY_BATCH_SIZE"] = "2"
    api_process = fleet.start_api()
    eventually(lambda: '"mqtt_connected"' in api_process.log(), what="bridge connected")
    ids = [f"e2e-now-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    with fleet.api as api:
        for device_id in ids:
            created = api.post("/devices", json={"id": device_id, "device_type": DEVICE_TYPE})
            assert created.status_code == 201, created.text
    watcher = deployment_watcher(broker, "kernex-watcher-2", fleet.root / "watcher")
    bundle = fleet.upload("5.0.0", payload_bytes=4096)
    deployment = fleet.deploy(bundle, ids)
    eventually(
        lambda: all(e["state"] == "notified" for e in fleet.executions(deployment).values()),
        timeout=15,
        what="all five notified without waiting for the interval",
    )
    notices = {
        m.topic.split("/")[3]: json.loads(m.payload)
        for m in watcher.drain(wait=1.0)
        if m.payload and m.topic.split("/")[3] in ids
    }
    watcher.close()
    assert sorted(notices) == sorted(ids)
    assert {n["deployment_id"] for n in notices.values()} == {deployment}
    # Each batch signs one URL for its bundle; every one of them serves the bundle.
    for url in {n["url"] for n in notices.values()}:
        fetched = httpx.get(url, timeout=10)
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == bundle["sha256"]


@pytest.mark.reliability(
    "Faults",
    "a bridge worker whose event loop is stuck",
    "its liveness probe fails, and passes again once it runs",
)
def test_worker_liveness_probe_fails_while_its_event_loop_is_stuck(fleet: Fleet) -> None:
    """The Kubernetes liveness probe of a bridge worker: `probe --liveness-file` passes while
    the worker's loop marks the file, fails once the process stops running (SIGSTOP, as a loop
    stuck in a blocking call would), and passes again when it runs."""
    mark = fleet.root / "worker-alive"
    worker = fleet.start_worker("kernex-backend-live", "--liveness-file", str(mark))
    probe = [str(BIN / "kernex-backend"), "probe", "--liveness-file", str(mark), "--max-age-s", "8"]

    def healthy() -> bool:
        result = subprocess.run(probe, capture_output=True, text=True, check=False)
        return result.returncode == 0

    eventually(healthy, timeout=30, what="worker marked alive", explain=worker.log)
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        eventually(lambda: not healthy(), timeout=20, what="probe fails on a stuck worker")
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    eventually(healthy, timeout=20, what="probe passes again")


def rollout_under_way(
    fleet: Fleet, version: str, **agent_options: str
) -> tuple[list[AgentProcess], str]:
    """Six devices online, a 2 MiB update to them, and at least one downloading (at 512 KiB/s
    each, so the rollout lasts a few seconds): the agents and the deployment."""
    agents = [
        fleet.add_device(update__download_rate_limit_bps=str(512 * 1024), **agent_options)
        for _ in range(6)
    ]
    for agent in agents:
        agent.start()
    ids = [a.device_id for a in agents]  # type: ignore[attr-defined]
    eventually(lambda: all(fleet.device(i)["online"] for i in ids), what="all online")
    deployment = fleet.deploy(fleet.upload(version, payload_bytes=2 * 1024 * 1024), ids)
    eventually(
        lambda: any(e["state"] == "downloading" for e in fleet.executions(deployment).values()),
        timeout=30,
        what="the rollout under way",
    )
    return agents, deployment


def states_of(fleet: Fleet, deployment: str) -> str:
    """The deployment's executions counted by state, for a figure."""
    states = Counter(e["state"] for e in fleet.executions(deployment).values())
    return ", ".join(f"{s} {n}" for s, n in sorted(states.items()))


def each_updated_once(
    fleet: Fleet,
    agents: list[AgentProcess],
    deployment: str,
    version: str,
    *,
    timeout: float,
    explain: Callable[[], str],
) -> None:
    """Every execution succeeded on its first attempt, and each agent started the update once
    and runs `version`."""

    def all_succeeded() -> dict[str, dict[str, Any]] | None:
        rows = fleet.executions(deployment)
        return rows if all(e["state"] == "succeeded" for e in rows.values()) else None

    executions = eventually(
        all_succeeded, timeout=timeout, what="every execution succeeded", explain=explain
    )
    assert all(e["attempt"] == 1 for e in executions.values()), executions
    for agent in agents:
        starts = [
            entry
            for entry in agent.log_lines()
            if entry.get("event") == "update.starting" and entry.get("deployment_id") == deployment
        ]
        assert len(starts) == 1, (agent.device_id, starts)  # type: ignore[attr-defined]
        assert running_version(agent.install_root) == version


@pytest.mark.reliability(
    "Faults",
    "one of two backend replicas killed (SIGKILL) mid-rollout",
    "the other carries the rollout to completion: every device updated once, on its first"
    " attempt, none lost",
)
def test_a_replica_killed_mid_rollout_loses_and_repeats_nothing(
    fleet: Fleet, figures: dict[str, Any]
) -> None:
    # Whatever the killed replica had acknowledged but not yet written (at most one flush
    # interval of progress reports) comes back when live notices are re-published and each
    # device answers with its state: every 2 s here, every 5 minutes by default.
    fleet.base_env["KERNEX_MQTT__RECONCILE_INTERVAL_S"] = "2"
    api = fleet.start_api()
    worker = fleet.start_worker("kernex-backend-doomed")
    eventually(lambda: '"mqtt_connected"' in worker.log(), what="worker connected")
    agents, deployment = rollout_under_way(fleet, "4.0.0")
    assert worker.process is not None
    worker.process.kill()
    killed_at = time.monotonic()
    states_at_kill = states_of(fleet, deployment)
    each_updated_once(fleet, agents, deployment, "4.0.0", timeout=90, explain=logs_of(api, *agents))
    with fleet.api as api_client:
        assert api_client.get(f"/deployments/{deployment}").json()["status"] == "completed"
    figures["devices"] = len(agents)
    figures["states when killed"] = states_at_kill
    figures["all succeeded after the kill (s)"] = round(time.monotonic() - killed_at, 1)


@pytest.mark.reliability(
    "Faults",
    "the broker restarted mid-rollout: gracefully, and killed with SIGKILL",
    "every device gets its notice and the rollout completes, each device updated once",
)
@pytest.mark.parametrize("how", ["graceful", "SIGKILL"])
def test_a_broker_restart_mid_rollout_loses_no_device(
    how: str, fleet: Fleet, broker: EmbeddedBroker, figures: dict[str, Any]
) -> None:
    api = fleet.start_api()
    agents, deployment = rollout_under_way(
        fleet, "5.0.0", mqtt__reconnect_min_s="0.5", mqtt__reconnect_max_s="2"
    )
    states_at_restart = states_of(fleet, deployment)
    if how == "SIGKILL":
        broker.kill()
    else:
        broker.stop()
    restarted_at = time.monotonic()
    broker.start()
    each_updated_once(
        fleet, agents, deployment, "5.0.0", timeout=120, explain=logs_of(api, *agents)
    )
    figures[f"{how}: states at the restart"] = states_at_restart
    figures[f"{how}: all succeeded after (s)"] = round(time.monotonic() - restarted_at, 1)
