"""What the agent tests drive: a real `kernex-agent` process with a real device kit, a real S3
bucket holding signed bundles, and a stand-in for the backend's MQTT side (notices, URL answers,
progress collection) connected to the real broker with the backend's service identity."""

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from minio import Minio

from kernex_protocol.manifest import (
    ReleaseManifest,
    RollbackApproval,
    SignedRelease,
    SignedRollback,
    sign,
    sign_rollback,
)
from kernex_protocol.payloads import (
    FINAL_STATES,
    Notice,
    Presence,
    Progress,
    UrlRequest,
    UrlResponse,
)
from kernex_protocol.topics import Channel, parse_topic, subscription_for_all, topic_for
from tests.integration.mqtt_client import Identity, connect

DEVICE_TYPE = "kx-test-board"
HEALTH_COMMAND = "sh current/health.sh"


# --- bundles -----------------------------------------------------------------------------


def app_archive(
    version: str,
    *,
    healthy: bool = True,
    payload_bytes: int = 64 * 1024,
    hostile: Iterable[tarfile.TarInfo] = (),
) -> bytes:
    """A tar.gz of a tiny application: VERSION, a payload with its digest, a health script."""
    payload = hashlib.shake_256(version.encode()).digest(payload_bytes)
    files = {
        "VERSION": version.encode(),
        "payload.bin": payload,
        "payload.sha256": hashlib.sha256(payload).hexdigest().encode(),
        "health.sh": b"exit 0\n" if healthy else b"exit 1\n",
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(content))
        for member in hostile:
            data = b"owned\n" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def partial_download(
    state_dir: Path, deployment_id: str, *, beyond: int, timeout: float = 20.0
) -> Path:
    """The agent's partial download of `deployment_id`, once it holds more than `beyond` bytes."""
    partial = state_dir / "downloads" / f"{deployment_id}.bundle"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (
        partial.exists() and partial.stat().st_size > beyond
    ):
        time.sleep(0.05)
    assert partial.exists() and partial.stat().st_size > beyond, "the download never got going"
    return partial


def running_version(install_root: Path) -> str | None:
    """The version `current` selects, after checking it is complete; None if nothing runs."""
    current = install_root / "current"
    if not current.is_symlink():
        return None
    version = os.readlink(current).rsplit("/", 1)[-1]
    folder = install_root / "versions" / version
    assert (folder / "VERSION").read_text() == version, f"{version} is incomplete"
    payload = (folder / "payload.bin").read_bytes()
    assert hashlib.sha256(payload).hexdigest() == (folder / "payload.sha256").read_text()
    return version


@dataclass
class Release:
    """A signed release stored in the bucket."""

    signed: SignedRelease
    object_name: str

    @property
    def version(self) -> str:
        return self.signed.manifest.version


class BundleStore:
    """Signed bundles in a real S3 bucket, and presigned URLs to them."""

    def __init__(self, client: Minio, bucket: str, key: Ed25519PrivateKey) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key

    def put(
        self,
        content: bytes,
        version: str,
        *,
        signed_content: bytes | None = None,
        key: Ed25519PrivateKey | None = None,
        device_type: str = DEVICE_TYPE,
    ) -> Release:
        """Store `content`; sign a manifest for `signed_content` (default: the same bytes)."""
        signed_bytes = content if signed_content is None else signed_content
        manifest = ReleaseManifest.for_bytes("app", version, device_type, signed_bytes)
        name = f"bundles/{uuid.uuid4().hex}"
        self.client.put_object(self.bucket, name, io.BytesIO(content), len(content))
        return Release(sign(manifest, key or self.key), name)

    def url(self, release: Release, expires_s: int = 600) -> str:
        return self.client.presigned_get_object(
            self.bucket, release.object_name, expires=dt.timedelta(seconds=expires_s)
        )

    def rollback(
        self, release: Release, *, from_version: str, valid_for_s: float = 7 * 86400
    ) -> SignedRollback:
        """The release team's approval to go from `from_version` back to `release`."""
        approval = RollbackApproval.for_manifest(
            release.signed.manifest,
            from_version=from_version,
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5),
            valid_for=dt.timedelta(seconds=valid_for_s),
        )
        return sign_rollback(approval, self.key)


# --- the backend's side of MQTT ------------------------------------------------------------


@dataclass
class BackendStandIn:
    """Publishes notices, answers url/request with presigned URLs, and records device traffic."""

    identity: Identity
    host: str
    port: int
    store: BundleStore
    notice_key: Ed25519PrivateKey  # the backend's notice key (the broker's development one)
    releases: dict[str, Release] = field(default_factory=dict)  # by deployment id
    url_requests: list[UrlRequest] = field(default_factory=list)
    url_expiry_s: int = 600
    answer_urls: bool = True
    _progress: "queue.Queue[tuple[str, Progress]]" = field(default_factory=queue.Queue)
    presence: list[tuple[str, Presence]] = field(default_factory=list)
    heartbeats: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.probe = connect(self.identity, self.host, self.port)
        assert self.probe.connected.is_set(), self.probe.error
        self.probe.client.on_message = self._on_message
        for channel in (Channel.PROGRESS, Channel.PRESENCE, Channel.HEARTBEAT, Channel.URL_REQUEST):
            self.probe.subscribe(subscription_for_all(channel))

    def stop(self) -> None:
        self.probe.close()

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None:
            return
        payload = bytes(message.payload)
        if parsed.channel == Channel.PROGRESS:
            self._progress.put((parsed.device_id, Progress.parse(payload)))
        elif parsed.channel == Channel.PRESENCE and payload:
            with self._lock:
                self.presence.append((parsed.device_id, Presence.parse(payload)))
        elif parsed.channel == Channel.HEARTBEAT:
            with self._lock:
                self.heartbeats.append((parsed.device_id, json.loads(payload)))
        elif parsed.channel == Channel.URL_REQUEST:
            request = UrlRequest.parse(payload)
            with self._lock:
                self.url_requests.append(request)
            release = self.releases.get(request.deployment_id)
            if release is None or not self.answer_urls:
                return
            response = UrlResponse(
                request.request_id,
                request.deployment_id,
                url=self.store.url(release, self.url_expiry_s),
            )
            self.probe.client.publish(
                topic_for(parsed.device_id, Channel.URL_RESPONSE), response.to_payload(), qos=1
            )

    def notify(
        self,
        device_id: str,
        release: Release,
        *,
        deployment_id: str | None = None,
        url: str | None = None,
        with_url: bool = True,
        expires_in_s: int = 3600,
        rollback: SignedRollback | None = None,
        notice_key: Ed25519PrivateKey | None = None,
        attempt: int = 1,
        start_delay_s: int = 0,
    ) -> str:
        """Publish a retained notice, signed with the backend's notice key (or `notice_key`);
        returns its deployment id."""
        deployment_id = deployment_id or f"dep-{uuid.uuid4().hex[:12]}"
        self.releases[deployment_id] = release
        now = dt.datetime.now(dt.UTC)
        notice = Notice(
            deployment_id=deployment_id,
            device_id=device_id,
            release=release.signed,
            issued_at=now.isoformat(timespec="seconds"),
            expires_at=(now + dt.timedelta(seconds=expires_in_s)).isoformat(timespec="seconds"),
            url=url if url is not None else (self.store.url(release) if with_url else None),
            rollback=rollback,
            attempt=attempt,
            start_delay_s=start_delay_s,
        ).signed_with(notice_key or self.notice_key)
        self.publish_notice(device_id, notice.to_payload())
        return deployment_id

    def publish_notice(self, device_id: str, payload: bytes) -> None:
        self.probe.publish(topic_for(device_id, Channel.DEPLOYMENT), payload, qos=1, retain=True)

    def clear_notice(self, device_id: str) -> None:
        self.publish_notice(device_id, b"")

    def progress_until_final(
        self, device_id: str, deployment_id: str, timeout: float = 30.0
    ) -> list[Progress]:
        """Every progress message of one deployment, up to and including its final state."""
        seen: list[Progress] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                device, progress = self._progress.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if device != device_id or progress.deployment_id != deployment_id:
                continue
            seen.append(progress)
            if progress.state in FINAL_STATES:
                return seen
        states = [p.state.value for p in seen]
        raise AssertionError(f"{deployment_id}: no final state within {timeout}s; saw {states}")

    def drain_progress(self) -> list[tuple[str, Progress]]:
        out = []
        while True:
            try:
                out.append(self._progress.get_nowait())
            except queue.Empty:
                return out


# --- the agent process ---------------------------------------------------------------------


class AgentProcess:
    """`python -m kernex_agent --config <kit>/agent.toml`, with test-friendly overrides."""

    def __init__(self, kit: Path, state_dir: Path, install_root: Path, **overrides: str) -> None:
        self.kit = kit
        self.state_dir = state_dir
        self.install_root = install_root
        self.log_path = state_dir.parent / f"{state_dir.name}-agent.log"
        self.env = {
            **os.environ,
            "KERNEX_AGENT_UPDATE__STATE_DIR": str(state_dir),
            "KERNEX_AGENT_UPDATE__INSTALL_ROOT": str(install_root),
            "KERNEX_AGENT_UPDATE__HEALTH_COMMAND": HEALTH_COMMAND,
            "KERNEX_AGENT_UPDATE__HEALTH_TIMEOUT_S": "10",
            "KERNEX_AGENT_UPDATE__RETRY_MIN_S": "0.1",
            "KERNEX_AGENT_UPDATE__RETRY_MAX_S": "0.5",
            "KERNEX_AGENT_UPDATE__RESERVE_BYTES": "0",
            "KERNEX_AGENT_MQTT__RECONNECT_MIN_S": "0.2",
            "KERNEX_AGENT_MQTT__RECONNECT_MAX_S": "1",
            "KERNEX_AGENT_TELEMETRY__HEARTBEAT_INTERVAL_S": "1",
            "KERNEX_AGENT_TELEMETRY__START_JITTER": "false",
            **{f"KERNEX_AGENT_{k.upper()}": v for k, v in overrides.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        # Run through this command first (it must exec the rest), e.g. to enter a cgroup.
        self.wrapper: list[str] = []

    def start(self, **extra_env: str) -> "AgentProcess":
        env = {**self.env, **extra_env}
        command = [sys.executable, "-m", "kernex_agent", "--config", str(self.kit / "agent.toml")]
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.process = subprocess.Popen(
                [*self.wrapper, *command],
                env=env,
                stdout=log,
                stderr=log,
            )
        return self

    def log_lines(self, since_start: bool = True) -> list[dict[str, Any]]:
        with self.log_path.open("rb") as log:
            if since_start:
                log.seek(self._log_offset)
            lines = log.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "text": line})
        return out

    def wait_log(self, event: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.log_lines():
                if entry.get("event") == event and all(
                    entry.get(k) == v for k, v in fields.items()
                ):
                    return entry
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"no {event} {fields} in the agent log:\n{self.log_path.read_text()[-4000:]}"
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def deploy(
    backend: BackendStandIn, store: BundleStore, device_id: str, version: str, **notice: Any
) -> list[Progress]:
    """Store, sign and announce `version`; wait for the final state of its deployment."""
    release = store.put(app_archive(version), version)
    deployment = backend.notify(device_id, release, **notice)
    return backend.progress_until_final(device_id, deployment)


class TcpRelay:
    """A TCP relay in front of the broker that a test can cut and restore (TLS passes through
    untouched), to take a device offline without stopping the shared broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._open.clear()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()
