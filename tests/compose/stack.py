"""The compose stack driven from a test: docker-compose with our override, on free ports, under
a project name of its own, talking to the services the way an operator and a device would."""

import json
import os
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kernex_devstack.ports import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "deploy/docker/compose.local.yml"]
LONG_RUNNING = ["postgres", "minio", "mosquitto", "backend", "agent", "prometheus"]
ONE_SHOT = ["provision", "migrate", "enrol-agent"]
AGENT_ID = "container-001"


def run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command from the repository root; its output, or an error that shows it."""
    done = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode}\n{done.stdout[-3000:]}"
            f"\n{done.stderr[-3000:]}"
        )
    return done.stdout


def eventually(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll until `check` returns True (or something truthy that is not a dict); a dict is
    the latest state, shown when time runs out, with `explain`'s output."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            last = exc
        else:
            if last and not isinstance(last, dict):
                return last
        time.sleep(0.5)
    context = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"not reached within {timeout}s: {what} (last: {last!r}){context}")


@dataclass
class ComposeStack:
    """One project of docker-compose.yml + the local override."""

    project: str
    env: dict[str, str]
    api_port: int
    mqtt_port: int
    prometheus_port: int
    release_keys: Path

    @classmethod
    def create(cls, release_keys: Path, base_image: str) -> "ComposeStack":
        api_port, mqtt_port, s3_port, prometheus_port = (free_port() for _ in range(4))
        project = f"kernex-ct-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": project,
            "KERNEX_API_PORT": str(api_port),
            "KERNEX_MQTT_PORT": str(mqtt_port),
            "KERNEX_S3_PORT": str(s3_port),
            "KERNEX_PROMETHEUS_PORT": str(prometheus_port),
            "KERNEX_RELEASE_KEYS_DIR": str(release_keys),
            "KERNEX_BASE_IMAGE": base_image,
        }
        return cls(project, env, api_port, mqtt_port, prometheus_port, release_keys)

    def compose(self, *args: str, timeout: float = 600) -> str:
        files = [part for name in COMPOSE_FILES for part in ("-f", name)]
        return run(["docker-compose", *files, *args], env=self.env, timeout=timeout)

    def container(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's (only) container."""
        ids = self.compose("ps", "-a", "-q", service).split()
        assert ids, f"no container for {service}"
        inspected: list[dict[str, Any]] = json.loads(run(["docker", "inspect", ids[0]]))
        return inspected[0]

    def health(self, service: str) -> str:
        state = self.container(service)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def exit_code(self, service: str) -> int | None:
        state = self.container(service)["State"]
        return None if state["Running"] else int(state["ExitCode"])

    def wait_healthy(self, services: list[str], timeout: float = 240) -> None:
        eventually(
            lambda: all(self.health(s) == "healthy" for s in services),
            timeout,
            f"healthy: {services} ({ {s: self.health(s) for s in services} })",
        )

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command)

    def cat(self, service: str, path: str) -> bytes:
        return self.exec(service, "cat", path).encode()

    def api(self, token: str, ca_file: Path) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://localhost:{self.api_port}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(ca_file)),
            timeout=30,
        )

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            kind: run(["docker", kind, "ls", "-q", "--filter", label]).split()
            if kind != "container"
            else run(["docker", "ps", "-aq", "--filter", label]).split()
            for kind in ("container", "volume", "network")
        }
