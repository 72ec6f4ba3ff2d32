"""The agent's connection: presence with growing sessions, heartbeats, clean shutdown, telling
permanent failures from transient ones, and progress that survives a lost connection."""

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.payloads import ProgressState
from kernex_provision.authority import CertificateAuthority, pem, write_private_key, write_public
from kernex_provision.certificates import CertificateKind, new_key
from tests.integration.agent.conftest import Device, DeviceFactory
from tests.integration.agent.harness import (
    AgentProcess,
    BackendStandIn,
    BundleStore,
    TcpRelay,
    app_archive,
    running_version,
)

pytestmark = pytest.mark.integration


def presence_of(backend: BackendStandIn, device: Device) -> list[tuple[bool, int, str | None]]:
    return [(p.online, p.session, p.reason) for d, p in backend.presence if d == device.device_id]


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_presence_sessions_heartbeats_and_clean_shutdown(
    make_device: DeviceFactory, backend_side: BackendStandIn
) -> None:
    device = make_device()
    device.agent.start()
    wait_until(lambda: presence_of(backend_side, device) == [(True, 1, None)])
    wait_until(lambda: len([h for d, h in backend_side.heartbeats if d == device.device_id]) >= 2)
    beats = [h for d, h in backend_side.heartbeats if d == device.device_id]
    assert [b["seq"] for b in beats[:2]] == [0, 1]
    assert beats[0]["session"] == 1 and beats[0]["v"] == 1
    assert {"load1_milli", "mem_available_kib", "disk_free_kib"} <= set(beats[0]["metrics"])
    assert beats[0]["uptime_s"] > 0 and beats[0]["agent_version"]
    assert beats[0]["update_state"] == "idle" and "last_error" not in beats[0]

    # SIGTERM: exit 0 and a retained goodbye of the same session (no Last Will needed).
    assert device.agent.terminate() == 0
    wait_until(lambda: presence_of(backend_side, device)[-1] == (False, 1, "shutdown"))

    # A restart is a new, larger session (past the block of numbers the last run reserved);
    # a crash leaves the Last Will of that session.
    device.agent.start()
    wait_until(lambda: presence_of(backend_side, device)[-1][::2] == (True, None))
    restarted = presence_of(backend_side, device)[-1][1]
    assert restarted > 1
    device.agent.kill()
    wait_until(lambda: presence_of(backend_side, device)[-1] == (False, restarted, "lost"))
    birth = next(p for d, p in backend_side.presence if d == device.device_id and p.online)
    assert birth.cert_serial and birth.agent_version


def test_progress_published_while_offline_arrives_after_reconnecting(
    make_device: DeviceFactory,
    broker: EmbeddedBroker,
    bundles: BundleStore,
    backend_side: BackendStandIn,
) -> None:
    relay = TcpRelay(broker.port)
    try:
        device = make_device(
            mqtt__port=str(relay.port), update__download_rate_limit_bps=str(1024 * 1024)
        )
        device.agent.start()
        device.agent.wait_log("mqtt.connected")
        release = bundles.put(app_archive("1.0.0", payload_bytes=3 * 1024 * 1024), "1.0.0")
        deployment = backend_side.notify(device.device_id, release)
        partial = device.agent.state_dir / "downloads" / f"{deployment}.bundle"
        wait_until(lambda: partial.exists() and partial.stat().st_size > 0)
        relay.cut()  # offline for the rest of the update
        device.agent.wait_log("mqtt.connection_lost", failure="transient")
        device.agent.wait_log("update.outcome", timeout=30, state="committed")
        assert running_version(device.install_root) == "1.0.0"
        relay.restore()
        progress = backend_side.progress_until_final(device.device_id, deployment, timeout=30)
        states = [p.state.value for p in progress]
        # The states the device went through while offline were queued, not lost.
        for state in ("verifying", "installing", "health_check", "committing", "committed"):
            assert state in states, states
        assert progress[-1].state == ProgressState.COMMITTED
    finally:
        relay.close()


def test_certificate_from_another_ca_is_a_permanent_failure(
    make_device: DeviceFactory, tmp_path: Path
) -> None:
    device = make_device()
    stranger_ca = CertificateAuthority.initialise(tmp_path / "stranger-ca", organization="Evil")
    key = new_key()
    cert = stranger_ca.issue(
        key.public_key(), kind=CertificateKind.DEVICE, common_name=device.device_id, days=1
    )
    write_private_key(device.kit / "device.key", key)
    write_public(device.kit / "device.crt", pem(cert))
    device.agent.start()
    entry = device.agent.wait_log("mqtt.connection_refused", failure="permanent")
    assert "refused this device's certificate" in entry["reason"]
    assert device.agent.terminate() == 0


@pytest.fixture
def impostor_broker(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[int]:
    """A TLS server with a certificate from the right CA but for another host name."""
    key = new_key()
    cert = broker.authority.issue(
        key.public_key(),
        kind=CertificateKind.SERVER,
        common_name="elsewhere.example",
        days=1,
        dns_names=["elsewhere.example"],
    )
    write_private_key(tmp_path / "impostor.key", key)
    write_public(tmp_path / "impostor.crt", pem(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "impostor.crt", tmp_path / "impostor.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def test_broker_host_name_is_verified(make_device: DeviceFactory, impostor_broker: int) -> None:
    device = make_device(mqtt__port=str(impostor_broker))
    device.agent.start()
    entry = device.agent.wait_log("mqtt.connection_refused", failure="permanent")
    assert "not trusted" in entry["reason"] and "mismatch" in entry["reason"].lower()


def test_unreachable_broker_is_transient_and_retried(make_device: DeviceFactory) -> None:
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    device = make_device(mqtt__port=str(port))
    device.agent.start()
    device.agent.wait_log("mqtt.connection_lost", failure="transient")
    time.sleep(1.5)
    attempts = [e for e in device.agent.log_lines() if e.get("event") == "mqtt.connection_lost"]
    assert len(attempts) >= 2  # it keeps trying, with backoff
    assert device.agent.terminate() == 0


def agent_health(device_agent: AgentProcess) -> subprocess.CompletedProcess[str]:
    """`kernex-agent --health` with the agent's own configuration, as a HEALTHCHECK runs it."""
    command = [sys.executable, "-m", "kernex_agent", "--health"]
    command += ["--config", str(device_agent.kit / "agent.toml")]
    return subprocess.run(
        command, check=False, env=device_agent.env, capture_output=True, text=True, timeout=30
    )


def test_health_command_follows_the_running_agent(
    make_device: DeviceFactory, backend_side: BackendStandIn
) -> None:
    device = make_device()
    before = agent_health(device.agent)
    assert before.returncode == 1 and "not running" in before.stdout
    device.agent.start()
    wait_until(lambda: presence_of(backend_side, device) == [(True, 1, None)])
    wait_until(lambda: "connected to the broker" in agent_health(device.agent).stdout)
    assert agent_health(device.agent).returncode == 0
    # A hung agent (stopped, not dead: its mark stays but ages) turns unhealthy.
    device.agent.kill()
    mark = device.agent.state_dir / "alive.json"
    body = json.loads(mark.read_text())
    body["at"] -= 3600
    mark.write_text(json.dumps(body))
    stale = agent_health(device.agent)
    assert stale.returncode == 1 and "hung or gone" in stale.stdout
