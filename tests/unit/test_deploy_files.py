"""Static checks of the container files: no Docker engine runs here, so they are never built in
CI. These checks catch what would break or weaken a deployment: missing files, unpinned images,
default secrets, health checks that cannot fail, a root container."""

import configparser
import re
from pathlib import Path

import pytest
import yaml

from kernex_agent.config import UpdateConfig
from kernex_backend.main import API_PREFIX

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "deploy" / "docker" / "backend.Dockerfile").read_text()
SERVICES = COMPOSE["services"]


def test_expected_services() -> None:
    assert set(SERVICES) == {"postgres", "minio", "provision", "mosquitto", "migrate", "backend"}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name].get("image", "")
    assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image!r})"


@pytest.mark.parametrize("name", ["postgres", "minio", "mosquitto"])
def test_long_running_dependencies_have_health_checks(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    joined = " ".join(test)
    assert "|| true" not in joined and "|| exit 0" not in joined  # a check that cannot fail


def test_one_shot_jobs_gate_their_dependents() -> None:
    backend = SERVICES["backend"]["depends_on"]
    assert backend["migrate"]["condition"] == "service_completed_successfully"
    assert (
        SERVICES["mosquitto"]["depends_on"]["provision"]["condition"]
        == "service_completed_successfully"
    )
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_secrets_have_no_defaults() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for variable in ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses, variable
        assert all(use.startswith(":?") for use in uses), (
            f"{variable} must be required, not defaulted"
        )
    assert "minioadmin" not in text and "kernex-dev" not in text


def test_backend_environment_is_production_and_complete() -> None:
    env = SERVICES["backend"]["environment"]
    assert env["KERNEX_ENVIRONMENT"] == "production"
    assert env["KERNEX_DATABASE_URL"].startswith("postgresql+asyncpg://")
    for key in (
        "KERNEX_STORAGE__ENDPOINT",
        "KERNEX_RELEASE__TRUSTED_KEYS_DIR",
        "KERNEX_PKI__CA_DIR",
    ):
        assert key in env


def test_dockerfile_copies_only_what_exists_and_runs_unprivileged() -> None:
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, flags=re.MULTILINE):
        assert (REPO / source).exists(), f"COPY source {source} does not exist"
    assert re.search(r"^USER (?!root)\S+", DOCKERFILE, flags=re.MULTILINE)
    assert "-c constraints.txt" in DOCKERFILE


def test_dockerfile_health_check_probes_a_real_route() -> None:
    healthcheck = next(
        line for line in DOCKERFILE.splitlines() if "CMD [" in line and "urlopen" in line
    )
    assert f"{API_PREFIX}/health" in healthcheck
    assert "sys.exit(0 if" in healthcheck  # exits non-zero on failure


def test_provision_script_exists_and_is_used() -> None:
    script = REPO / "deploy" / "docker" / "provision.sh"
    assert script.exists() and "set -eu" in script.read_text()
    assert SERVICES["provision"]["entrypoint"][-1] == "/app/deploy/provision.sh"


AGENT_DOCKERFILE = (REPO / "deploy" / "docker" / "agent.Dockerfile").read_text()
AGENT_UNIT = REPO / "device-agent" / "systemd" / "kernex-agent.service"


def test_agent_dockerfile_installs_only_the_agent_and_runs_unprivileged() -> None:
    for source in re.findall(r"^COPY (\S+) ", AGENT_DOCKERFILE, flags=re.MULTILINE):
        assert (REPO / source).exists(), f"COPY source {source} does not exist"
    assert re.search(r"^USER (?!root)\S+", AGENT_DOCKERFILE, flags=re.MULTILINE)
    install = next(line for line in AGENT_DOCKERFILE.splitlines() if "pip install" in line)
    assert "-c constraints.txt" in install and "backend" not in install
    assert 'ENTRYPOINT ["kernex-agent"]' in AGENT_DOCKERFILE


def test_agent_systemd_unit_matches_the_agent_defaults() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(AGENT_UNIT)
    service = unit["Service"]
    defaults = UpdateConfig()
    assert service["ExecStart"].split()[1:] == ["--config", "/etc/kernex/agent.toml"]
    assert Path("/var/lib") / service["StateDirectory"] == defaults.state_dir
    assert str(defaults.install_root) in service["ReadWritePaths"].split()
    assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2"  # the agent's configuration-error status
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_backend_runs_the_mqtt_bridge_with_files_from_a_mounted_volume() -> None:
    env = SERVICES["backend"]["environment"]
    assert env["KERNEX_MQTT__ENABLED"] == "true"
    assert env["KERNEX_MQTT__HOST"] == "mosquitto"  # a DNS name in the broker's certificate
    mounts = [v.split(":")[1] for v in SERVICES["backend"]["volumes"]]
    for key in ("KERNEX_MQTT__CA_FILE", "KERNEX_MQTT__CERT_FILE", "KERNEX_MQTT__KEY_FILE"):
        assert any(env[key].startswith(m + "/") for m in mounts), key
    provision = (REPO / "deploy" / "docker" / "provision.sh").read_text()
    assert "--dns mosquitto" in provision and "issue-service" in provision
