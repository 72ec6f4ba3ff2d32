"""No secret ever reaches a log line: a whole run (API keys, a refused key, S3 credentials,
presigned URLs, release, notice and device keys, a CSR provisioned through the API, a webhook
and its signed deliveries), every process at DEBUG, then every log file is searched for every
secret the run used."""

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import make_url

from kernex_devstack.s3 import EmbeddedS3
from kernex_provision.authority import write_private_key
from kernex_provision.certificates import make_csr, new_key
from tests.e2e.fleet import Fleet, eventually, logs_of
from tests.integration.webhooks.receiver import Receiver

pytestmark = pytest.mark.e2e

# A presigned URL's signature and credential scope: a bearer credential until it expires.
PRESIGNED = re.compile(r"X-Amz-(Signature|Credential)=", re.IGNORECASE)
PEM_PRIVATE = "PRIVATE KEY-----"


def pem_body_lines(path: Path) -> list[str]:
    """The base64 lines of a PEM file: any one of them in a log is part of the key."""
    return [
        line
        for line in path.read_text().splitlines()
        if line and not line.startswith("-----") and len(line) >= 20
    ]


def leaks(logs: dict[str, str], secrets: dict[str, str]) -> list[str]:
    found = []
    for name, text in logs.items():
        found += [f"{what} in {name}" for what, value in secrets.items() if value in text]
        if PRESIGNED.search(text):
            found.append(f"a presigned URL's signature in {name}")
        if PEM_PRIVATE in text:
            found.append(f"a PEM private key in {name}")
    return found


def test_the_leak_search_finds_what_it_looks_for() -> None:
    logs = {"a.log": '{"url": "http://s3/b?X-Amz-Signature=abc"}', "b.log": "token kx_1_s3cr3t"}
    assert leaks(logs, {"token": "s3cr3t"}) == [
        "a presigned URL's signature in a.log",
        "token in b.log",
    ]
    assert leaks({"c.log": "nothing here"}, {"token": "s3cr3t"}) == []


@pytest.mark.reliability(
    "Secrets",
    "every key, token and password of a whole run searched for in every log, at DEBUG",
    "none found",
)
def test_no_secret_used_in_a_whole_run_is_logged(
    fleet: Fleet, s3_server: EmbeddedS3, database_url: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    fleet.base_env.update(
        {
            "KERNEX_LOG__LEVEL": "DEBUG",
            "KERNEX_PKI__CA_DIR": str(fleet.broker.ca_dir),
            "KERNEX_PKI__BROKER_DIR": str(fleet.broker.layout.directory),
            "KERNEX_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",
            "KERNEX_WEBHOOKS__INTERVAL_S": "0.2",
        }
    )
    receiver = Receiver()
    api_process = fleet.start_api()
    try:
        with fleet.api as api:
            hook = api.post(
                "/webhooks",
                json={
                    "name": "ops",
                    "url": receiver.url,
                    "event_types": ["deployment.completed", "device.registered"],
                },
            )
            assert hook.status_code == 201, hook.text
            receiver.secret = hook.json()["secret"]
            # A refused key: what was presented must not be logged either.
            refused_secret = uuid.uuid4().hex
            wrong = api.get(
                "/devices",
                headers={"Authorization": f"Bearer kx_{uuid.uuid4().hex[:12]}_{refused_secret}"},
            )
            assert wrong.status_code == 401
            # A device provisioned from a CSR through the API.
            csr_key = new_key()
            write_private_key(tmp_path / "csr-device.key", csr_key)
            name = f"csr-{uuid.uuid4().hex[:8]}"
            csr = make_csr(csr_key, name).public_bytes(serialization.Encoding.PEM).decode()
            issued = api.post(
                f"/devices/{name}/certificate", json={"csr": csr, "device_type": "gateway"}
            )
            assert issued.status_code == 201, issued.text

        agent = fleet.add_device(log__level="DEBUG")
        agent.start()
        device_id = agent.device_id  # type: ignore[attr-defined]
        deployment = fleet.deploy(fleet.upload("1.0.0"), [device_id])
        eventually(
            lambda: fleet.executions(deployment)[device_id]["state"] == "succeeded",
            timeout=60,
            what="the update installed",
            explain=logs_of(agent, api_process),
        )
        eventually(
            lambda: any(r.event_type == "deployment.completed" for r in receiver.received),
            what="the webhook delivered",
        )
        assert all(r.signature_ok for r in receiver.received)
        agent.terminate()
    finally:
        receiver.close()
        fleet.stop()

    creds = s3_server.credentials()
    secrets = {
        "the API key": fleet.token,
        "the API key's secret part": fleet.token.rsplit("_", 1)[1],
        "a refused key's secret": refused_secret,
        "the S3 secret key": creds.secret_key,
        "the webhook secret": receiver.secret,
    }
    password = make_url(database_url).password
    if password:
        secrets["the database password"] = password
    keys = {
        "the device key": agent.kit / "device.key",
        "the CSR device's key": tmp_path / "csr-device.key",
        "the notice signing key": fleet.broker.notice_key_file,
    }
    for what, path in keys.items():
        for number, line in enumerate(pem_body_lines(path)):
            secrets[f"{what} (line {number + 1})"] = line

    logs = {
        str(path.relative_to(fleet.root)): path.read_text(errors="replace")
        for path in fleet.root.rglob("*.log")
    }
    # The search ran over a real run: both processes logged, at DEBUG, what they did.
    assert any(
        "execution_finished" in text or "deployment_completed" in text for text in logs.values()
    )
    assert any('"debug"' in text for text in logs.values()), "nothing logged at DEBUG"
    assert len(logs) >= 2, sorted(logs)
    # ...and the search finds what those lines do hold: the IDs of this run, in every log.
    named = leaks(logs, {"the device ID": device_id, "the deployment ID": deployment})
    assert {line.split(" in ")[1] for line in named} == set(logs), named
    assert leaks(logs, secrets) == []
    figures["secrets searched for"] = len(secrets)
    figures["log lines searched"] = sum(text.count("\n") for text in logs.values())
