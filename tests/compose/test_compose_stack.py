"""docker-compose.yml for real: images built here, every service up and healthy, a device agent
container online over mTLS, a signed bundle deployed to it, state that survives a backend
restart, a revocation that cuts a live session within 5 s, and `down -v` leaving nothing.

Runs in order on one stack (module-scoped); `make compose-test` is the way to run it."""

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kernex_protocol.manifest import ReleaseManifest, sign
from kernex_protocol.topics import Channel, topic_for
from kernex_provision.certificates import make_csr, new_key
from tests.compose.stack import (
    AGENT_ID,
    LONG_RUNNING,
    ONE_SHOT,
    REPO,
    ComposeStack,
    eventually,
    run,
)
from tests.integration.agent.harness import app_archive
from tests.integration.mqtt_client import Identity, Probe, connect

BASE_IMAGE = "kernex-debian:bookworm"
CUT_OFF_LIMIT_S = 5.0


@pytest.fixture(scope="module")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    folder = tmp_path_factory.mktemp("release-keys")
    (folder / "release-compose.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    folder.chmod(0o755)
    return key, folder


@pytest.fixture(scope="module")
def stack(release_key: tuple[Ed25519PrivateKey, Path]) -> Iterator[ComposeStack]:
    run(["deploy/docker/engine.sh", "start"])
    run(["deploy/docker/debian-base.sh", BASE_IMAGE])
    run(["deploy/docker/build-images.sh"], env={**os.environ, "KERNEX_BASE_IMAGE": BASE_IMAGE})
    run(["deploy/docker/make-secrets.sh"])
    compose = ComposeStack.create(release_key[1], BASE_IMAGE)
    compose.compose("build", "--quiet", "postgres", "minio")
    try:
        started = time.monotonic()
        compose.compose("up", "-d")
        compose.wait_healthy(LONG_RUNNING)
        print(f"compose stack healthy {time.monotonic() - started:.1f} s after `up -d`")
        yield compose
    finally:
        if os.environ.get("KERNEX_COMPOSE_KEEP") == "1":
            print(f"kept for debugging: COMPOSE_PROJECT_NAME={compose.project}")
        elif compose.leftovers()["container"]:
            compose.compose("down", "-v", "--remove-orphans")
        if os.environ.get("KERNEX_COMPOSE_KEEP") != "1":
            run(["deploy/docker/engine.sh", "stop"])  # only if this run started it


@pytest.fixture(scope="module")
def ca_file(stack: ComposeStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca-chain.pem"
    path.write_bytes(stack.cat("backend", "/pki/ca/ca-chain.pem"))
    return path


@pytest.fixture(scope="module")
def token(stack: ComposeStack) -> str:
    return stack.exec(
        "backend", "kernex-backend", "create-api-key", "--name", "compose-test"
    ).strip()


def test_every_service_is_healthy_and_every_job_succeeded(stack: ComposeStack) -> None:
    assert {s: stack.health(s) for s in LONG_RUNNING} == dict.fromkeys(LONG_RUNNING, "healthy")
    assert {s: stack.exit_code(s) for s in ONE_SHOT} == dict.fromkeys(ONE_SHOT, 0)
    # The images run as their own users, never root.
    for service, user in (
        ("backend", "kernex"),
        ("agent", "kernex-agent"),
        ("mosquitto", "mosquitto"),
    ):
        assert stack.exec(service, "id", "-un").strip() == user


def test_migrations_are_at_head(stack: ComposeStack) -> None:
    config = Config()
    config.set_main_option("script_location", str(REPO / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    applied = stack.exec(
        "postgres",
        "psql",
        "-U",
        "kernex",
        "-d",
        "kernex",
        "-tAc",
        "SELECT version_num FROM alembic_version",
    ).strip()
    assert applied == head


def test_api_is_https_only_and_ready(stack: ComposeStack, ca_file: Path, token: str) -> None:
    with stack.api(token, ca_file) as api:
        ready = api.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.headers["strict-transport-security"].startswith("max-age=")
    with pytest.raises(httpx.HTTPError):  # no plain HTTP answer on the TLS port
        httpx.get(f"http://localhost:{stack.api_port}/api/v1/health", timeout=5)


def test_agent_container_is_online_over_mtls(
    stack: ComposeStack, ca_file: Path, token: str
) -> None:
    with stack.api(token, ca_file) as api:
        eventually(lambda: api.get(f"/devices/{AGENT_ID}").json()["online"], 60, "agent online")
        device = api.get(f"/devices/{AGENT_ID}").json()
    assert device["device_type"] == "container"
    assert device["cert_serial"]


def test_prometheus_scrapes_the_backend_and_loads_the_alert_rules(stack: ComposeStack) -> None:
    base = f"http://localhost:{stack.prometheus_port}/api/v1"

    def value(expr: str) -> float:
        result = httpx.get(f"{base}/query", params={"query": expr}, timeout=10).json()
        return float(result["data"]["result"][0]["value"][1]) if result["data"]["result"] else 0

    eventually(lambda: value('up{job="kernex"}') == 1, 90, "the backend scraped")
    eventually(lambda: value("kernex:devices_active:max") >= 1, 90, "the agent counted active")
    assert value("kernex_mqtt_bridge_connected") == 1
    groups = httpx.get(f"{base}/rules", timeout=10).json()["data"]["groups"]
    assert {"kernex-recording", "kernex-alerts"} <= {g["name"] for g in groups}


def test_signed_bundle_deployed_to_the_agent_container_succeeds(
    stack: ComposeStack, ca_file: Path, token: str, release_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    content = app_archive("2.0.0")
    manifest = ReleaseManifest.for_bytes("app", "2.0.0", "container", content)
    with stack.api(token, ca_file) as api:
        upload = api.post(
            "/bundles",
            content=content,
            headers={"Kernex-Release": sign(manifest, release_key[0]).to_json()},
        )
        assert upload.status_code == 201, upload.text
        created = api.post(
            "/deployments",
            json={"name": "compose", "bundle_id": upload.json()["id"], "device_ids": [AGENT_ID]},
        )
        assert created.status_code == 201, created.text
        deployment_id = created.json()["id"]
        execution = f"/deployments/{deployment_id}/executions"
        eventually(
            lambda: (row := api.get(execution).json()["data"][0])["state"] == "succeeded" or row,
            120,
            "the execution succeeded",
            explain=lambda: stack.compose("logs", "--tail=30", "agent"),
        )
    assert stack.exec("agent", "cat", "/opt/kernex/app/current/VERSION").strip() == "2.0.0"


def test_backend_restart_keeps_all_state(stack: ComposeStack, ca_file: Path, token: str) -> None:
    with stack.api(token, ca_file) as api:
        before = {
            "devices": api.get("/devices").json()["data"],
            "bundles": [b["id"] for b in api.get("/bundles").json()["data"]],
            "deployments": [(d["id"], d["status"]) for d in api.get("/deployments").json()["data"]],
        }
    stack.compose("restart", "backend")
    stack.wait_healthy(["backend"], timeout=120)
    with stack.api(token, ca_file) as api:
        assert [b["id"] for b in api.get("/bundles").json()["data"]] == before["bundles"]
        assert [(d["id"], d["status"]) for d in api.get("/deployments").json()["data"]] == before[
            "deployments"
        ]
        devices = {d["id"]: d for d in api.get("/devices").json()["data"]}
        assert set(devices) == {d["id"] for d in before["devices"]}
        assert devices[AGENT_ID]["current_version"] == "2.0.0"
        # The agent's session comes back to the restarted bridge.
        eventually(lambda: api.get(f"/devices/{AGENT_ID}").json()["online"], 60, "agent online")


def _enrol_probe_device(
    stack: ComposeStack, api: httpx.Client, device_id: str, folder: Path, ca_file: Path
) -> Identity:
    key = new_key()
    csr = make_csr(key, device_id).public_bytes(serialization.Encoding.PEM).decode()
    issued = api.post(
        f"/devices/{device_id}/certificate", json={"csr": csr, "device_type": "container"}
    )
    assert issued.status_code == 201, issued.text
    cert_file, key_file = folder / f"{device_id}.crt", folder / f"{device_id}.key"
    cert_file.write_text(issued.json()["certificate"])
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Identity(device_id, ca_file, cert_file, key_file)


def _service_probe_identity(stack: ComposeStack, folder: Path, ca_file: Path) -> Identity:
    """A second service identity, issued by the stack's CA: it reads every device's topics,
    which is how the test sees whether a device's traffic still gets through."""
    name = "compose-probe"
    inside = f"/tmp/{name}"
    stack.exec(
        "backend", "kernex-provision", "issue-service", "--ca", "/pki/ca", "--out", inside, name
    )
    cert_file, key_file = folder / "service.crt", folder / "service.key"
    cert_file.write_bytes(stack.cat("backend", f"{inside}/service.crt"))
    key_file.write_bytes(stack.cat("backend", f"{inside}/service.key"))
    key_file.chmod(0o600)
    return Identity(name, ca_file, cert_file, key_file)


def _round_trip(service: Probe, device: Probe, device_id: str, n: int) -> tuple[bool, bool]:
    """(the device's heartbeat reached the service probe, the service's message reached the
    device), each given 1 s."""
    heartbeat = topic_for(device_id, Channel.HEARTBEAT)
    notice = topic_for(device_id, Channel.DEPLOYMENT)
    with contextlib.suppress(RuntimeError):  # not connected: its session was ended
        device.publish(heartbeat, f"probe-{n}".encode())
    service.publish(notice, f"notice-{n}".encode())
    time.sleep(1.0)
    heard = any(m.payload == f"probe-{n}".encode() for m in service.drain())
    reached = any(m.payload == f"notice-{n}".encode() for m in device.drain())
    return heard, reached


def test_revoked_device_is_cut_off_within_5_s(
    stack: ComposeStack, ca_file: Path, token: str, tmp_path: Path
) -> None:
    """A device enrolled through the API and connected from outside the stack is revoked
    through the API: the backend writes the CRL and ACL into the broker volume, the broker's
    runner reloads Mosquitto, the live session loses all access and is ended, and the device
    cannot connect again."""
    device_id = "probe-revoked"
    service_identity = _service_probe_identity(stack, tmp_path, ca_file)
    with stack.api(token, ca_file) as api:
        identity = _enrol_probe_device(stack, api, device_id, tmp_path, ca_file)
        # A first revocation (of another device) re-renders the ACL, granting compose-probe.
        _enrol_probe_device(stack, api, "probe-warmup", tmp_path, ca_file)
        assert api.post("/devices/probe-warmup/revoke", json={}).status_code == 200
    time.sleep(1.5)
    service = connect(service_identity, "localhost", stack.mqtt_port)
    device = connect(identity, "localhost", stack.mqtt_port)
    try:
        assert service.connected.is_set(), service.error
        assert device.connected.is_set(), device.error
        service.subscribe(topic_for(device_id, Channel.HEARTBEAT))
        device.subscribe(topic_for(device_id, Channel.DEPLOYMENT))
        assert _round_trip(service, device, device_id, 0) == (True, True)

        started = time.monotonic()
        with stack.api(token, ca_file) as api:
            revoked = api.post(f"/devices/{device_id}/revoke", json={"reason": "keyCompromise"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["broker_reloaded"] is True
        assert revoked.json()["session_ended"] is True
        n, cut_after = 1, None
        while time.monotonic() - started < CUT_OFF_LIMIT_S + 5:
            sent_at = time.monotonic()
            if _round_trip(service, device, device_id, n) == (False, False):
                cut_after = sent_at - started
                break
            n += 1
        assert cut_after is not None, "the revoked device kept access"
        print(f"revoked session cut off {cut_after:.2f} s after the API call")
        assert cut_after < CUT_OFF_LIMIT_S
        # It stays cut off, and the agent container, not revoked, stays online.
        for m in range(n + 1, n + 4):
            assert _round_trip(service, device, device_id, m) == (False, False)
        assert device.disconnected.is_set(), "the revoked device's session was not ended"
        refused = connect(identity, "localhost", stack.mqtt_port, timeout=3)
        assert not refused.connected.is_set(), "the revoked device connected again"
        with stack.api(token, ca_file) as api:
            assert api.get(f"/devices/{AGENT_ID}").json()["online"]
        serial = x509.load_pem_x509_certificate(identity.cert_file.read_bytes()).serial_number  # type: ignore[union-attr]
        crl = x509.load_pem_x509_crl(stack.cat("mosquitto", "/broker/crl.pem"))
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    finally:
        service.close()
        device.close()


def test_down_with_volumes_leaves_nothing(stack: ComposeStack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.leftovers() == {"container": [], "volume": [], "network": []}
