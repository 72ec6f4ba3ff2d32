"""deploy/terraform parsed with python-hcl2 and scanned by checkov. No Terraform binary and no
cloud account are reachable here, so this is what can be known without them: every file
parses, every variable and resource referenced exists, the settings the design relies on are
there, and checkov has no unexplained finding."""

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.unit.deploy_tools import checkov

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "deploy" / "terraform"
KUBERNETES_ENV = REPO / "deploy" / "kubernetes" / "base" / "kernex.env"

Block = dict[str, Any]


def _clean(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals and block labels; drop them."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@cache
def parsed() -> dict[str, list[Block]]:
    merged: dict[str, list[Block]] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            for kind, blocks in _clean(hcl2.load(handle)).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def resources() -> dict[tuple[str, str], Block]:
    out: dict[tuple[str, str], Block] = {}
    for block in parsed().get("resource", []):
        for kind, named in block.items():
            for name, body in named.items():
                out[(kind, name)] = body
    return out


def resource(kind: str, name: str) -> Block:
    return resources()[(kind, name)]


def every_expression() -> str:
    return json.dumps(parsed())


def test_every_file_parses_and_a_broken_one_would_not(tmp_path: Path) -> None:
    assert len(list(TERRAFORM.glob("*.tf"))) >= 6
    assert parsed()["resource"]
    broken = tmp_path / "broken.tf"
    broken.write_text('resource "aws_s3_bucket" "x" {\n  bucket = "a"\n')
    with broken.open() as handle, pytest.raises(Exception):  # noqa: B017 - lark's own errors
        hcl2.load(handle)


def test_variables_referenced_are_declared_and_declared_ones_used() -> None:
    declared = {name for block in parsed()["variable"] for name in block}
    used = set(re.findall(r"\bvar\.([a-z0-9_]+)", every_expression()))
    assert used - declared == set(), "undeclared variables"
    assert declared - used == set(), "variables nothing uses"


def test_references_name_resources_that_exist() -> None:
    known = {f"{kind}.{name}" for kind, name in resources()}
    data = {
        f"data.{kind}.{name}"
        for block in parsed().get("data", [])
        for kind, named in block.items()
        for name in named
    }
    text = every_expression()
    refs = set(re.findall(r"(?<![\w.])((?:aws|random)_[a-z0-9_]+\.[a-z0-9_]+)", text))
    assert len(refs) > 20 and refs - known == set()
    data_refs = set(re.findall(r"\b(data\.[a-z0-9_]+\.[a-z0-9_]+)", text))
    assert data_refs - data == set()


def test_bundle_bucket_is_versioned_expiring_encrypted_and_private() -> None:
    versioning = resource("aws_s3_bucket_versioning", "bundles")
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"
    rules = resource("aws_s3_bucket_lifecycle_configuration", "bundles")["rule"]
    assert all(rule["status"] == "Enabled" for rule in rules)
    assert any("noncurrent_version_expiration" in rule for rule in rules)
    assert any("abort_incomplete_multipart_upload" in rule for rule in rules)
    encryption = resource("aws_s3_bucket_server_side_encryption_configuration", "bundles")
    default = encryption["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms"
    block = resource("aws_s3_bucket_public_access_block", "bundles")
    assert all(
        block[k] is True
        for k in (
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        )
    )
    assert "aws:SecureTransport" in json.dumps(resource("aws_s3_bucket_policy", "bundles"))


def test_database_is_multi_az_encrypted_backed_up_and_private() -> None:
    db = resource("aws_db_instance", "kernex")
    assert db["engine"] == "postgres"
    for setting in (
        "multi_az",
        "storage_encrypted",
        "deletion_protection",
        "manage_master_user_password",
    ):
        assert db[setting] is True, setting
    assert db["publicly_accessible"] is False
    assert db["skip_final_snapshot"] is False
    assert db["backup_retention_period"] == "${var.db_backup_retention_days}"
    (retention,) = [b for b in parsed()["variable"] if "db_backup_retention_days" in b]
    assert ">= 7" in retention["db_backup_retention_days"]["validation"][0]["condition"]
    parameters = {
        p["name"]: p["value"] for p in resource("aws_db_parameter_group", "kernex")["parameter"]
    }
    assert parameters["rds.force_ssl"] == "1"


def test_cluster_is_private_with_encrypted_secrets_and_a_shared_pki_volume() -> None:
    cluster = resource("aws_eks_cluster", "kernex")
    assert cluster["vpc_config"][0]["endpoint_public_access"] is False
    assert cluster["encryption_config"][0]["resources"] == ["secrets"]
    assert set(cluster["enabled_cluster_log_types"]) >= {"api", "audit", "authenticator"}
    assert resource("aws_efs_file_system", "pki")["encrypted"] is True
    assert resource("aws_eks_addon", "efs_csi")["addon_name"] == "aws-efs-csi-driver"


def test_backend_secret_has_the_files_the_kubernetes_pods_mount() -> None:
    secret = resource("aws_secretsmanager_secret_version", "backend")["secret_string"]
    keys = set(re.findall(r"\"([a-z0-9-]+)\"\s*[:=]", secret.replace("\\", "")))
    mounted = set(re.findall(r"/run/secrets/kernex/([a-z0-9-]+)", KUBERNETES_ENV.read_text()))
    assert mounted and mounted <= keys, (mounted, keys)


def test_checkov_finds_nothing_unexplained() -> None:
    report = checkov("-d", str(TERRAFORM), "--framework", "terraform")
    assert report.failed == [], "\n".join(report.failed)
    assert report.passed > 100
    for check, reason in report.skip_reasons.items():
        assert len(reason) > 20, f"{check} skipped without a reason"
