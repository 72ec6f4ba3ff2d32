"""A real Prometheus (Debian's) scrapes a real `serve` and `worker` with our alert rules: the
series exist, and the offline-devices alert fires when a device dies and resolves when it is
back. Rules are used as written, except every `for:` is shortened to 0 s so the test does not
wait minutes (the durations themselves are covered by the promtool unit tests)."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kernex_devstack.ports import free_port, wait_for_port
from tests.e2e.fleet import Fleet, eventually

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "kernex-rules.yml"


class Prometheus:
    """Debian's prometheus on a free port, scraping `targets` every second."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run `make bootstrap` (Debian package)"
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "0s"
        (root / "rules.yml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(root / "rules.yml")],
            "scrape_configs": [{"job_name": "kernex", "static_configs": [{"targets": targets}]}],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (root / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=self.log,
        )
        assert wait_for_port("127.0.0.1", self.port, timeout=30)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}, timeout=10
        ).json()
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> set[str]:
        answer = httpx.get(f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=10).json()
        return {
            a["labels"]["alertname"] for a in answer["data"]["alerts"] if a["state"] == "firing"
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


@pytest.fixture
def monitored(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Fleet, Prometheus]]:
    api_port, worker_port = free_port(), free_port()
    fleet.base_env["KERNEX_METRICS__REFRESH_INTERVAL_S"] = "0.5"
    fleet.base_env["KERNEX_METRICS__PORT"] = str(api_port)
    fleet.start_api()
    fleet.base_env["KERNEX_METRICS__PORT"] = str(worker_port)
    fleet.start_worker("kernex-worker-1")
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(
        tmp_path / "prometheus", [f"127.0.0.1:{api_port}", f"127.0.0.1:{worker_port}"]
    )
    try:
        yield fleet, prometheus
    finally:
        prometheus.stop()


def test_series_exist_and_the_offline_alert_fires_and_resolves(
    monitored: tuple[Fleet, Prometheus],
) -> None:
    fleet, prometheus = monitored
    agents = [fleet.add_device() for _ in range(3)]
    for agent in agents:
        agent.start()
    ids = [agent.device_id for agent in agents]  # type: ignore[attr-defined]
    eventually(lambda: all(fleet.device(d)["online"] for d in ids), 60, "devices online")

    # Both processes are scraped and report what they see.
    eventually(lambda: prometheus.value('sum(up{job="kernex"})') == 2, 30, "both targets up")
    eventually(
        lambda: (
            prometheus.value("kernex:devices_active:max") == 3
            and prometheus.value("kernex:devices_offline:max") == 0
        ),
        30,
        "three active devices, none offline",
        explain=lambda: str(prometheus.query("kernex_devices")) + str(prometheus.query("up")),
    )
    assert prometheus.value("sum(kernex_mqtt_bridge_connected)") == 2
    eventually(
        lambda: (
            (prometheus.value('sum(kernex_mqtt_messages_received_total{channel="heartbeat"})') or 0)
            > 0
        ),
        30,
        "heartbeats counted",
    )
    assert prometheus.query("kernex_http_request_duration_seconds_count")
    assert prometheus.query("kernex_deployments") is not None
    assert "KernexDevicesOffline" not in prometheus.firing()

    started = time.monotonic()
    agents[0].kill()
    eventually(lambda: "KernexDevicesOffline" in prometheus.firing(), 60, "the alert fires")
    print(f"KernexDevicesOffline firing {time.monotonic() - started:.1f} s after the kill")
    assert "KernexDevicesWentOfflineInBulk" in prometheus.firing()

    agents[0].start()
    eventually(lambda: "KernexDevicesOffline" not in prometheus.firing(), 60, "the alert resolves")
