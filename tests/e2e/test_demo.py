"""`make demo` end to end: the real demo process, real embedded PostgreSQL, real HTTP."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from kernex_devstack.ports import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
KEY_RE = re.compile(r"KERNEX_API_KEY=(kx_\S+)")


def start_demo(state_dir: Path, port: int) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "KERNEX_DATABASE_URL"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernex_devstack.demo",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = KEY_RE.search(line)
        if match:
            return proc, match.group(1), lines
    proc.kill()
    proc.wait()
    proc.stdout.close()  # else the pipe is reported unclosed in whichever test runs next
    raise AssertionError("the demo printed no API key:\n" + "".join(lines[-40:]))


def stop_demo(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_demo_serves_the_api_with_the_printed_key_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    proc, token, lines = start_demo(tmp_path, port)
    output = "".join(lines)
    try:
        # The whole story: real agents online, a signed bundle rolled out to the two gateways.
        assert "3 agents online over mTLS" in output
        assert "demo: rollout completed: 2 succeeded" in output, output[-2500:]
        assert re.search(r"demo-gw-001 +runs 1\.0\.0", output)
        # The second act: a bad build in waves stops itself and rolls back.
        assert "demo: simulated fleet runs 1.0.0 (20 succeeded)" in output, output[-2500:]
        assert "demo: [waves] ABORTED by its abort rule" in output, output[-2500:]
        assert "demo: [waves] automatic rollback started" in output
        assert re.search(r"demo: wave rollout of 1\.0\.1 aborted; simulated fleet now runs", output)
        headers = {"Authorization": f"Bearer {token}"}
        devices = httpx.get(f"{base}/devices", headers=headers, timeout=10)
        assert devices.status_code == 200
        assert devices.json()["count"] == 3 + 20  # the sample agents and the simulated fleet
        assert httpx.get(f"{base}/devices", timeout=10).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).status_code == 200
        assert httpx.get(f"{base}/ready", timeout=10).json()["checks"]["database"] == "ok"
    finally:
        assert stop_demo(proc) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=2)
    agents = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "kernex_agent" in " ".join(p.info["cmdline"] or [])
        and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert agents == []  # the demo's agents stopped with it

    # A second run reuses the data, mints a new key and revokes the old one.
    proc, second_token, lines = start_demo(tmp_path, port)
    try:
        # The next good version (1.0.1 was the bad build).
        assert re.search(r"demo-gw-002 +runs 1\.0\.2", "".join(lines))
        assert second_token != token
        kept = httpx.get(
            f"{base}/devices", headers={"Authorization": f"Bearer {second_token}"}, timeout=10
        )
        assert kept.json()["count"] == 3 + 20
        old = httpx.get(f"{base}/devices", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert old.status_code == 401
    finally:
        assert stop_demo(proc) == 0
