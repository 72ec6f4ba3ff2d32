"""Static checks of the container files, in seconds: missing files, unpinned images, default
secrets, health checks that cannot fail, a root container. `make compose-test`
(tests/compose) builds and runs them for real."""

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
DOCKERFILES = sorted((REPO / "deploy" / "docker").rglob("*.Dockerfile"))


def test_expected_services() -> None:
    assert set(SERVICES) == {
        "postgres",
        "minio",
        "provision",
        "mosquitto",
        "migrate",
        "backend",
        "enrol-agent",
        "agent",
        "prometheus",
        "grafana",
    }
    assert "name" not in COMPOSE  # docker-compose 1.29 refuses the top-level key


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name].get("image", "")
    assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image!r})"


@pytest.mark.parametrize("name", ["postgres", "minio", "prometheus", "grafana"])
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


def test_secrets_are_files_without_defaults() -> None:
    secrets = COMPOSE["secrets"]
    assert set(secrets) == {
        "postgres_password",
        "s3_access_key",
        "s3_secret_key",
        "grafana_admin_password",
    }
    assert all(spec["file"].startswith("./secrets/") for spec in secrets.values())
    backend = SERVICES["backend"]["environment"]
    assert backend["KERNEX_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert ":" not in backend["KERNEX_DATABASE_URL"].split("@")[0].split("//")[1]  # no password
    text = (REPO / "docker-compose.yml").read_text()
    assert "minioadmin" not in text and "kernex-dev" not in text and "PASSWORD:" not in text
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "secrets/" in ignored and "secrets" in (REPO / ".dockerignore").read_text().split()


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


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists_and_run_unprivileged(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for part in source.split():
            if not part.startswith(".build/"):  # made by build-images.sh
                assert (REPO / part).exists(), f"COPY source {part} does not exist"
    assert re.search(r"^USER (?!root)\S+", text, flags=re.MULTILINE)
    assert "ARG BASE_IMAGE=" in text


@pytest.mark.parametrize("name", ["backend", "agent", "broker"])
def test_kernex_images_install_only_wheels_and_carry_labels(name: str) -> None:
    text = (REPO / "deploy" / "docker" / f"{name}.Dockerfile").read_text()
    assert text.count("FROM ${BASE_IMAGE}") == 2  # multi-stage: no build tools at run time
    assert "--no-index --find-links /wheels" in text
    assert "org.opencontainers.image.version" in text and "image.revision" in text
    assert "HEALTHCHECK" in text and "|| true" not in text


def test_backend_health_check_probes_a_real_route() -> None:
    assert 'CMD ["kernex-backend", "probe"]' in DOCKERFILE
    cli = (REPO / "backend" / "kernex_backend" / "cli.py").read_text()
    assert f'"{API_PREFIX}/health"' in cli and "raise typer.Exit(1)" in cli


def test_provision_script_exists_and_is_used() -> None:
    script = REPO / "deploy" / "docker" / "provision.sh"
    assert script.exists() and "set -eu" in script.read_text()
    assert SERVICES["provision"]["entrypoint"][-1] == "/app/deploy/provision.sh"


AGENT_DOCKERFILE = (REPO / "deploy" / "docker" / "agent.Dockerfile").read_text()
AGENT_UNIT = REPO / "device-agent" / "systemd" / "kernex-agent.service"


def test_agent_image_installs_only_the_agent() -> None:
    install = next(line for line in AGENT_DOCKERFILE.splitlines() if "--disable-pip" in line)
    assert "backend" not in install and "provision" not in install
    assert 'ENTRYPOINT ["kernex-agent"]' in AGENT_DOCKERFILE
    assert '"--health"' in AGENT_DOCKERFILE


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


WORKFLOW = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())


def test_workflow_runs_the_same_entry_points_as_ci_run() -> None:
    """`.ci/run` is the source of truth; the GitHub workflow must call the same make targets.
    (actionlint cannot be installed here: its PyPI build downloads the binary from GitHub.)"""
    runs = {
        name: " ".join(step.get("run", "") for step in job["steps"])
        for name, job in WORKFLOW["jobs"].items()
    }
    assert "make check" in runs["check"]
    assert "make test" in runs["test"]
    assert "make compose-test" in runs["compose"]
    ci_run = (REPO / ".ci" / "run").read_text()
    assert "make check" in ci_run and "make test" in ci_run and "make compose-test" in ci_run
    for name, job in WORKFLOW["jobs"].items():
        assert job.get("timeout-minutes"), f"{name}: a job without a timeout can hang for hours"
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), f"{name}: a step runs or uses, not both"
            if "uses" in step:
                assert re.search(r"@v\d+$", step["uses"]), f"{name}: pin {step['uses']}"
    assert WORKFLOW["permissions"] == {"contents": "read"}  # least privilege by default
    # Images are pushed from main only, after every check passed.
    images = WORKFLOW["jobs"]["images"]
    assert "refs/heads/main" in images["if"] and set(images["needs"]) == {
        "check",
        "test",
        "compose",
    }
