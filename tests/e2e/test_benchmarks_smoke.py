"""The benchmarks at toy size, so they keep working: each runs end to end against the real
stack (PostgreSQL, S3, our Mosquitto, the backend, simulated devices) and records its figures,
into a temporary folder rather than BENCHMARKS.md. Nothing here judges a figure's size; the
full runs are the documented commands in bench/README.md."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_benchmark(
    script: str, args: list[str], tmp_path: Path, *, keeps_stack: bool = True
) -> dict[str, dict[str, Any]]:
    """Run `script` at toy size; `keeps_stack` for the ones that start the whole stack (their
    `--keep` leaves its folder for a failed run's logs)."""
    output = tmp_path / "results"
    output.mkdir()
    keep = ["--keep", str(tmp_path / "run")] if keeps_stack else []
    finished = subprocess.run(
        [sys.executable, str(BENCH / script), *args, *keep],
        env={**os.environ, "KERNEX_BENCH_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "Command: `.venv/bin/python bench/" in (output / "BENCHMARKS.md").read_text()
    return {row["name"]: row for row in json.loads((output / "latest.json").read_text())}


def test_fleet_benchmark_runs_small(tmp_path: Path) -> None:
    devices = 120
    figures = run_benchmark(
        "fleet_benchmarks.py",
        [
            "--devices",
            str(devices),
            "--window-s",
            "10",
            "--api-requests",
            "20",
            "--complete-first",
            "60",
            "--ramp",
            "200",
        ],
        tmp_path,
    )
    assert figures["capacity.connected_devices"]["value"] == devices
    assert figures["capacity.connect_ramp_s"]["value"] > 0
    assert figures["api.list_p50_ms"]["value"] > 0
    assert figures["api.list_p99_ms"]["value"] >= figures["api.list_p50_ms"]["value"]
    held = [figures[f"notify.p{q}_s_{devices}"]["value"] for q in (50, 95, 100)]
    assert 0 < held[0] <= held[1] <= held[2]
    assert figures[f"notify.reported_p100_s_{devices}"]["value"] > 0
    assert figures["complete.60_s"]["baseline"] > 0
    assert figures[f"complete.{devices}_s"]["value"] > 0
    waves = figures[f"rollout.{devices}_waves_s"]
    assert waves["value"] > 0 and waves["baseline"] == figures[f"complete.{devices}_s"]["value"]
    assert figures[f"rollout.create_selector_{devices}_s"]["value"] > 0


def test_notify_benchmark_runs_small(tmp_path: Path) -> None:
    devices = 100
    figures = run_benchmark(
        "notify_benchmark.py", ["--devices", str(devices), "--rounds", "2"], tmp_path
    )
    assert figures[f"notify.alone_post_s_{devices}"]["value"] > 0
    p50, p100 = (figures[f"notify.alone_p{q}_s_{devices}"] for q in (50, 100))
    assert 0 < p50["value"] <= p100["value"] and p100["baseline"] > 0
    assert figures["notify.alone_ratio"]["value"] > 0


def test_ingest_benchmark_runs_small(tmp_path: Path) -> None:
    figures = run_benchmark(
        "ingest_benchmark.py",
        [
            *("--devices", "40", "--processes", "1"),
            *("--start-rate", "100", "--max-rate", "200", "--step-s", "3", "--repeat", "1"),
        ],
        tmp_path,
    )
    rate = figures["ingest.rate_per_s"]
    assert 90 <= rate["value"] <= 210 and 90 <= rate["baseline"] <= 210
    assert figures["ingest.ratio"]["value"] == rate["ratio"] > 0
    assert 0 < figures["ingest.lag_p99_ms"]["value"] < 1000


def test_progress_benchmark_runs_small(tmp_path: Path) -> None:
    # It fails by itself if a run did not take every execution to SUCCEEDED.
    figures = run_benchmark(
        "progress_benchmark.py", ["--devices", "300", "--repeats", "1"], tmp_path, keeps_stack=False
    )
    for name in ("progress.apply_cpu_us", "progress.apply_wall_us"):
        assert figures[name]["value"] > 0 and figures[name]["baseline"] > 0


def test_heartbeat_storage_benchmark_runs_small(tmp_path: Path) -> None:
    # It fails by itself unless every heartbeat it sent through the ingest was stored.
    figures = run_benchmark(
        "heartbeat_storage.py",
        ["--devices", "100", "--intervals", "5"],
        tmp_path,
        keeps_stack=False,
    )
    stored = figures["heartbeat.stored_bytes"]
    # A stored row holds at least what the device sent, plus the row and index overhead.
    assert stored["value"] > stored["baseline"] > 100
    assert figures["heartbeat.partition_mib_10k_devices_day"]["value"] > 0


def test_notice_building_benchmark_runs_small(tmp_path: Path) -> None:
    figures = run_benchmark(
        "notice_building.py", ["--notices", "200", "--repeats", "2"], tmp_path, keeps_stack=False
    )
    built = figures["notice.build_cpu_us"]
    assert built["value"] > built["baseline"] > 0  # a notice costs its signature and more


def test_agent_footprint_benchmark_runs_small(tmp_path: Path) -> None:
    # Against this checkout itself: both of its device venvs are built and their agents connect.
    figures = run_benchmark(
        "agent_footprint.py",
        [
            "--agents",
            "1",
            "--settle-s",
            "2",
            "--window-s",
            "2",
            "--against-tree",
            str(BENCH.parent),
        ],
        tmp_path,
        keeps_stack=False,
    )
    agent, floor = figures["agent.idle_rss_mib"], figures["agent.library_floor_rss_mib"]
    assert agent["value"] > floor["value"] > agent["baseline"] > 0
