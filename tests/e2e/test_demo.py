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
        assert f"dashboard:  http://127.0.0.1:{port}/ui/" in output
        assert "demo: rollout completed, outcome succeeded: 2 succeeded" in output, output[-2500:]
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
        # What a new user tries: cutting a sample gateway off (the next run must cope).
        revoked = httpx.post(
            f"{base}/devices/demo-gw-002/revoke", headers=headers, json={}, timeout=10
        )
        assert revoked.status_code == 200 and revoked.json()["device_cut_off"], revoked.text
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

    # A second run reuses the data, mints a new key and revokes the old one; the revoked
    # gateway gets a new certificate rather than stopping the demo.
    proc, second_token, lines = start_demo(tmp_path, port)
    try:
        output = "".join(lines)
        assert "demo-gw-002's certificate was revoked or expired; issuing a new one" in output
        # The next good version (1.0.1 was the bad build).
        assert re.search(r"demo-gw-002 +runs 1\.0\.2", output), output[-2500:]
        ship_your_own(tmp_path, port, second_token, output + _rest_of_banner(proc))
        assert second_token != token
        kept = httpx.get(
            f"{base}/devices", headers={"Authorization": f"Bearer {second_token}"}, timeout=10
        )
        assert kept.json()["count"] == 3 + 20
        old = httpx.get(f"{base}/devices", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert old.status_code == 401
    finally:
        assert stop_demo(proc) == 0


def _rest_of_banner(proc: subprocess.Popen[str]) -> str:
    """The banner lines after the key, up to its closing rule."""
    assert proc.stdout is not None
    rest = []
    while (line := proc.stdout.readline()) and not line.startswith("=" * 20):
        rest.append(line)
    return "".join(rest)


def ship_your_own(tmp_path: Path, port: int, token: str, banner: str) -> None:
    """Follow the banner's "ship your own version" lines as a new user would: a bundle with a
    bin/hello, signed with the printed key, uploaded and deployed with the kernex CLI."""
    import io
    import tarfile

    key = re.search(r"--key (\S+)", banner)
    version = re.search(r"--name hello-app --version (\S+)", banner)
    assert key and version, banner
    bundle = tmp_path / "my-app.tar.gz"
    with tarfile.open(bundle, "w:gz") as archive:
        script = b"#!/bin/sh\necho my own hello\n"
        info = tarfile.TarInfo("bin/hello")
        info.size, info.mode = len(script), 0o755
        archive.addfile(info, io.BytesIO(script))
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            str(bin_dir / "kernex-release"),
            "sign",
            str(bundle),
            "--key",
            key.group(1),
            "--name",
            "hello-app",
            "--version",
            version.group(1),
            "--device-type",
            "gateway",
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "KERNEX_URL": f"http://127.0.0.1:{port}", "KERNEX_API_KEY": token}

    def kernex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "kernex"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    uploaded = kernex("bundles", "upload", str(bundle))
    assert uploaded.returncode == 0, uploaded.stderr
    deployed = kernex(
        "deploy",
        f"hello-app@{version.group(1)}",
        "--to",
        "site=hall-a",
        "--waves",
        "1,100%",
        "--json",
    )
    assert deployed.returncode == 0, deployed.stderr
    deployment = re.search(r'"id": "([0-9a-f-]{36})"', deployed.stdout)
    assert deployment
    watched = kernex("deployments", "watch", deployment.group(1))
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "outcome succeeded" in watched.stdout
