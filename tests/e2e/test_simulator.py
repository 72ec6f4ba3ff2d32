"""kernex-sim as a rollout rehearsal, small: a few hundred simulated devices (real agents,
real mTLS) against the real backend, one deployment, faults included. The full-size runs are
the benchmarks in bench/; this keeps the simulator working in CI."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from kernex_devstack.broker import EmbeddedBroker
from tests.e2e.fleet import BIN, Fleet, eventually
from tests.integration.agent.harness import DEVICE_TYPE

pytestmark = pytest.mark.e2e

DEVICES = 200


def test_rehearsal_with_a_few_hundred_simulated_devices(
    fleet: Fleet, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    fleet.start_api()
    (tmp_path / "key").write_text(fleet.token)
    prefix = f"sim{tmp_path.name[-6:].replace('_', '')}".lower()[:12]
    summary = tmp_path / "summary.json"
    sim = subprocess.Popen(
        [
            str(BIN / "kernex-sim"),
            "run",
            "--ca",
            str(broker.ca_dir),
            "--ca-chain",
            str(broker.service_dir / "ca-chain.pem"),
            "--release-keys",
            str(fleet.root / "release-keys"),
            "--broker-host",
            "localhost",
            "--broker-port",
            str(broker.port),
            "--devices",
            str(DEVICES),
            "--processes",
            "2",
            "--prefix",
            prefix,
            "--device-type",
            DEVICE_TYPE,
            "--heartbeat-s",
            "5",
            "--ramp",
            "200",
            "--fail-install",
            "0.1",
            "--seed",
            "7",
            "--nice",
            "5",
            "--state-dir",
            str(tmp_path / "sim"),
            "--register",
            f"http://127.0.0.1:{fleet.port}/api/v1",
            "--api-key-file",
            str(tmp_path / "key"),
            "--summary",
            str(summary),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with fleet.api as api:
            eventually(
                lambda: (
                    api.get("/devices", params={"online": "true", "limit": 1}).json()["count"]
                    >= DEVICES
                ),
                timeout=90,
                what="every simulated device online",
            )
            devices = [
                d["id"]
                for d in api.get("/devices", params={"limit": 500}).json()["data"]
                if d["id"].startswith(prefix)
            ]
        assert len(devices) == DEVICES
        # The supervisor and every worker run at the lower priority asked for.
        processes = [psutil.Process(sim.pid), *psutil.Process(sim.pid).children(recursive=True)]
        assert len(processes) >= 3
        assert {p.nice() for p in processes} == {psutil.Process().nice() + 5}
        deployment = fleet.deploy(fleet.upload("5.0.0"), devices)
        with fleet.api as api:
            detail = eventually(
                lambda: (
                    (d := api.get(f"/deployments/{deployment}").json())["status"] == "completed"
                    and d
                ),
                timeout=120,
                what="the rehearsal deployment completed",
            )
            # Heartbeats start at a random point of the first interval: wait for everyone's.
            eventually(
                lambda: all(
                    api.get(f"/devices/{d}/heartbeats", params={"limit": 1}).json()["count"] > 0
                    for d in devices
                ),
                timeout=60,
                what="a heartbeat stored from every simulated device",
            )
    finally:
        sim.send_signal(signal.SIGINT)
        output, _ = sim.communicate(timeout=120)
    assert sim.returncode == 0, output[-3000:]
    plan = json.loads((tmp_path / "sim" / "plan.json").read_text())
    failing = sum(d["fail_install"] for d in plan)
    assert 0 < failing < DEVICES
    counts = detail["execution_counts"]
    assert counts["succeeded"] == DEVICES - failing
    assert counts["rolled_back"] == failing
    report = json.loads(summary.read_text())
    assert report["ramp"]["connected_100pct_s"] > 0
    assert report["final_states"] == {"committed": DEVICES - failing, "rolled_back": failing}
    assert report["sent"]["heartbeat"] >= DEVICES
    print(output[-2000:], file=sys.stderr)
