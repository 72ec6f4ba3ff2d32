"""deploy/kubernetes rendered by kustomize (kubectl's built-in v5), validated against the
Kubernetes API schemas with kubernetes-validate, scanned by checkov, and read for what the
design promises: probes, disruption budgets, autoscaling, non-root read-only pods, deny-by-default
network policies, one MQTT identity per bridge worker, migrations before serving, and the alert
rules. No cluster is reachable here: nothing in this file applies the manifests."""

import importlib.util
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from kernex_backend.core.config import Settings
from tests.unit.deploy_tools import checkov, deploy_tool

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("staging", "production")
# The release kubectl ships now and the newest one kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.35.0", kubernetes_validate.latest_version())
# Custom resources of the Prometheus Operator: no schema in kubernetes-validate; checked below.
OPERATOR_KINDS = {"PrometheusRule", "ServiceMonitor"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}

Manifest = dict[str, Any]


@cache
def rendered(overlay: str) -> str:
    kubectl = deploy_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def manifests(overlay: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def find(overlay: str, kind: str, name: str) -> Manifest:
    for doc in manifests(overlay):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {overlay}")


def pod_specs(overlay: str) -> Iterator[tuple[str, Manifest]]:
    for doc in manifests(overlay):
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_is_valid_for_kubernetes(overlay: str, version: str) -> None:
    kinds = set()
    for doc in manifests(overlay):
        kinds.add(doc["kind"])
        if doc["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    assert {"Deployment", "StatefulSet", "Job", "NetworkPolicy", "HorizontalPodAutoscaler"} <= kinds


def test_the_validation_refuses_a_broken_resource() -> None:
    """The schema check above can fail: an unknown field and a wrongly typed one are refused."""
    api = find("production", "Deployment", "kernex-api")
    unknown = {**api, "spec": {**api["spec"], "replicass": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSIONS[0], strict=True)
    mistyped = {**api, "spec": {**api["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing_unexplained(overlay: str, tmp_path: Path) -> None:
    """Every checkov finding is fixed, or skipped in place with a reason."""
    target = tmp_path / f"{overlay}.yaml"
    target.write_text(rendered(overlay))
    report = checkov("-f", str(target), "--framework", "kubernetes")
    assert report.failed == [], "\n".join(report.failed)
    assert report.passed > 300
    for check, reason in report.skip_reasons.items():
        assert len(reason) > 20, f"{check} skipped without a reason"


def test_api_replicas_probes_budget_and_autoscaler() -> None:
    for overlay in OVERLAYS:
        api = find(overlay, "Deployment", "kernex-api")
        assert api["spec"]["replicas"] >= 2
        assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        (container,) = api["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/api/v1/health"
        budget = find(overlay, "PodDisruptionBudget", "kernex-api")
        assert 1 <= budget["spec"]["minAvailable"] < api["spec"]["replicas"]
        hpa = find(overlay, "HorizontalPodAutoscaler", "kernex-api")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "kernex-api"
        assert hpa["spec"]["minReplicas"] == api["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    assert find("production", "Deployment", "kernex-api")["spec"]["replicas"] == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_and_bounded(overlay: str) -> None:
    for name, pod in pod_specs(overlay):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
    namespace = next(d for d in manifests(overlay) if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default(overlay: str) -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for d in manifests(overlay) if d["kind"] == "NetworkPolicy"
    }
    deny = policies["kernex-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    api_ingress = policies["kernex-api-ingress"]["ingress"]
    assert [p["port"] for rule in api_ingress for p in rule["ports"]] == [8000]
    assert all(rule.get("from") for rule in api_ingress), "the API is open to every pod"
    broker = policies["kernex-broker-ingress"]["ingress"]
    assert [p["port"] for rule in broker for p in rule["ports"]] == [8883]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_bridge_worker_has_its_own_identity(overlay: str) -> None:
    bridge = find(overlay, "StatefulSet", "kernex-bridge")
    (container,) = bridge["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["KERNEX_MQTT__ENABLED"]["value"] == "true"
    identity = next(m for m in container["volumeMounts"] if m["mountPath"] == "/identity")
    assert identity["subPathExpr"] == "services/$(POD_NAME)"
    assert env["KERNEX_MQTT__CERT_FILE"]["value"].startswith("/identity/")
    # The provision Job issues one identity per possible pod name, kernex-bridge-0 ... N-1.
    job = find(overlay, "Job", "kernex-provision")
    job_env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert int(job_env["KERNEX_BRIDGE_IDENTITIES"]) >= bridge["spec"]["replicas"]
    assert "kernex-bridge-$i" in rendered(overlay)
    # The API replicas run no bridge: their identity would be shared between replicas.
    api = find(overlay, "Deployment", "kernex-api")
    api_env = {e["name"] for e in api["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert "KERNEX_MQTT__ENABLED" not in api_env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_before_the_backend_serves(overlay: str) -> None:
    for kind, name in (("Deployment", "kernex-api"), ("StatefulSet", "kernex-bridge")):
        pod = find(overlay, kind, name)["spec"]["template"]["spec"]
        assert [c["command"] for c in pod["initContainers"]] == [["kernex-backend", "migrate"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_broker_persists_and_reads_its_files_where_they_were_rendered(overlay: str) -> None:
    broker = find(overlay, "StatefulSet", "kernex-broker")
    assert broker["spec"]["replicas"] == 1
    (container,) = broker["spec"]["template"]["spec"]["containers"]
    assert container["command"][:4] == [
        "kernex-provision",
        "broker-run",
        "--broker-dir",
        "/pki/broker",
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # provision.sh renders mosquitto.conf under /pki/broker with absolute paths.
    assert mounts["/pki/broker"]["subPath"] == "broker"
    assert mounts["/pki/broker/data"]["name"] == "data"
    assert '--out "$broker"' in rendered(overlay) and "broker=$pki/broker" in rendered(overlay)
    (claim,) = broker["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    service = find(overlay, "Service", "kernex-broker")
    assert [p["port"] for p in service["spec"]["ports"]] == [8883]
    pki = find(overlay, "PersistentVolumeClaim", "kernex-pki")
    assert pki["spec"]["accessModes"] == ["ReadWriteMany"]


def _is_setting(model: type[BaseModel], key: str) -> bool:
    *groups, leaf = key.split("__")
    for group in groups:
        field = model.model_fields.get(group)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return leaf in model.model_fields or (
        leaf.endswith("_file") and leaf.removesuffix("_file") in model.model_fields
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_names_only_real_settings(overlay: str) -> None:
    config = next(
        d
        for d in manifests(overlay)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("kernex-config")
    )
    names = list(config["data"])
    for _, pod in pod_specs(overlay):
        for container in containers(pod):
            names += [
                e["name"] for e in container.get("env", []) if e["name"].startswith("KERNEX_")
            ]
    unknown = [
        n
        for n in names
        if n.startswith("KERNEX_")
        and n not in {"KERNEX_NAMESPACE", "KERNEX_BROKER_HOST", "KERNEX_BRIDGE_IDENTITIES"}
        and not _is_setting(Settings, n.removeprefix("KERNEX_").lower())
    ]
    assert unknown == []
    assert not any(re.search(r"(password|secret_key|access_key)$", n.lower()) for n in names)


def test_the_setting_check_can_fail() -> None:
    assert _is_setting(Settings, "mqtt__host") and _is_setting(Settings, "database_password_file")
    assert not _is_setting(Settings, "mqtt__hots") and not _is_setting(Settings, "bogus")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rules_and_scraping(overlay: str) -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "kernex-rules.yml").read_text())
    rule = find(overlay, "PrometheusRule", "kernex")
    assert rule["spec"]["groups"] == rules["groups"]
    monitors = {
        d["metadata"]["name"]: d for d in manifests(overlay) if d["kind"] == "ServiceMonitor"
    }
    assert set(monitors) == {"kernex-api", "kernex-bridge"}
    for name, monitor in monitors.items():
        service = find(overlay, "Service", name)
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
        # The alerts match job=~"kernex.*": the operator names the job after the Service.
        assert re.fullmatch(r"kernex.*", name)


def test_generated_prometheus_rule_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "prometheus_rule", KUBERNETES / "prometheus_rule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text() == module.render(), (
        "run: .venv/bin/python deploy/kubernetes/prometheus_rule.py"
    )
