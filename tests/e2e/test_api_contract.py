"""The OpenAPI document is the API's contract: schemathesis (every check, every phase: examples,
coverage, fuzzing and the stateful phase that follows the document's links) runs against the
real server, with its database, S3, broker and CA, and finds nothing the server does that the
document does not say."""

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet import Fleet
from tests.integration.agent.harness import DEVICE_TYPE
from tests.unit.deploy_tools import deploy_tool

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 25  # per operation and phase: over 1,000 cases in all
MIN_CASES = 1000


@pytest.mark.reliability(
    "Bad input",
    "the REST API under schemathesis: every check; coverage, fuzzing and stateful phases",
    "no failure: no 5xx, every status and body as documented",
)
def test_schemathesis_finds_no_failure_in_at_least_1000_cases(
    fleet: Fleet, tmp_path: Path, figures: dict[str, Any]
) -> None:
    fleet.base_env.update(
        {
            "KERNEX_PKI__CA_DIR": str(fleet.broker.ca_dir),
            "KERNEX_PKI__BROKER_DIR": str(fleet.broker.layout.directory),
        }
    )
    fleet.start_api()
    # Resources for the run to work on (see schemathesis.toml, [parameters]).
    bundle = fleet.upload("1.0.0")
    device_id = f"st-{uuid.uuid4().hex[:8]}"
    with fleet.api as api:
        created = api.post("/devices", json={"id": device_id, "device_type": DEVICE_TYPE})
        assert created.status_code == 201, created.text
        hook = api.post(
            "/webhooks",
            json={
                "name": "contract",
                "url": "http://10.255.255.1/kernex",
                "event_types": ["device.revoked"],
            },
        )
        assert hook.status_code == 201, hook.text
        spare_key = api.post("/api-keys", json={"name": "contract-spare", "scopes": ["read"]})
        assert spare_key.status_code == 201, spare_key.text
    ids = {
        "KERNEX_ST_BUNDLE_ID": str(bundle["id"]),
        "KERNEX_ST_DEPLOYMENT_ID": fleet.deploy(bundle, [device_id]),
        "KERNEX_ST_WEBHOOK_ID": str(hook.json()["id"]),
        "KERNEX_ST_KEY_ID": str(spare_key.json()["id"]),
    }
    report = tmp_path / "report"
    result = subprocess.run(
        [
            deploy_tool("schemathesis"),
            "--config-file",
            str(CONFIG),
            "run",
            f"http://127.0.0.1:{fleet.port}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            os.environ.get("KERNEX_SCHEMATHESIS_SEED", "20261203"),
            "--header",
            f"Authorization: Bearer {fleet.token}",
            "--request-timeout",
            "10",
            # One worker: parallel stateful scenarios would delete each other's resources
            # (one lists webhooks and deletes what another just created and then reads).
            "--workers",
            "1",
            "--no-color",
            "--report",
            "json",
            "--report-dir",
            str(report),
        ],
        env={**os.environ, **ids},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, output
    (run,) = [json.loads(path.read_text()) for path in report.glob("*.json")]
    assert run["complete"] and run["errors"] == [], output
    assert run["test_cases"]["unique_failures"] == 0, output
    assert run["test_cases"]["generated"] >= MIN_CASES, run["test_cases"]
    assert run["operations"]["tested"] == run["operations"]["total"], run["operations"]
    for phase in ("coverage", "fuzzing", "stateful"):
        assert run["phases"][phase]["status"] == "success", run["phases"]
    figures["operations"] = run["operations"]["tested"]
    figures["cases"] = run["test_cases"]["generated"]
    figures["failures"] = run["test_cases"]["unique_failures"]
