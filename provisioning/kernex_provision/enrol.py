"""Enrol a device through the backend's API: the key is made here and never leaves, the backend
signs the CSR with its online CA and registers the device, and the answer becomes a kit.

For factory lines and containers that have an operator API key but no access to the CA. Talks
plain HTTP(S) with the standard library, so provisioning stays free of the backend's packages.
"""

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kernex_protocol.ids import validate_device_id
from kernex_provision.authority import NOTICE_KEYS, RELEASE_KEYS
from kernex_provision.certificates import make_csr, new_key
from kernex_provision.kit import AGENT_CONFIG, BrokerAddress, write_kit_files

TIMEOUT_S = 30.0


class EnrolmentError(Exception):
    """The backend refused or could not be reached; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What to ask for and where the kit goes."""

    api_url: str  # e.g. https://kernex.example.com/api/v1
    token: str
    device_id: str
    device_type: str
    out: Path
    broker: BrokerAddress
    name: str | None = None
    release_keys: Path | None = None
    notice_keys: Path | None = None
    ca_file: Path | None = None  # trust for an HTTPS API with a private CA


def _post(enrolment: Enrolment, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's API
        enrolment.api_url.rstrip("/") + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {enrolment.token}",
            "Content-Type": "application/json",
        },
    )
    context = None
    if enrolment.ca_file is not None:
        context = ssl.create_default_context(cafile=str(enrolment.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:  # noqa: S310
            answer: dict[str, object] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise EnrolmentError(f"the backend answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrolmentError(f"cannot reach {enrolment.api_url}: {exc}") from None


def enrol(enrolment: Enrolment) -> str:
    """Make a key and CSR, have the backend sign it, write the kit; returns the serial.

    A complete kit (its agent.toml is written last) is left alone: one-shot jobs may rerun.
    """
    validate_device_id(enrolment.device_id)
    if (enrolment.out / AGENT_CONFIG).exists():
        return ""
    key = new_key()
    csr = make_csr(key, enrolment.device_id).public_bytes(serialization.Encoding.PEM).decode()
    body: dict[str, object] = {"csr": csr, "device_type": enrolment.device_type}
    if enrolment.name:
        body["name"] = enrolment.name
    answer = _post(enrolment, f"/devices/{enrolment.device_id}/certificate", body)
    certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
    write_kit_files(
        enrolment.out,
        chain_pem=str(answer["ca_chain"]).encode(),
        key_sources={RELEASE_KEYS: enrolment.release_keys, NOTICE_KEYS: enrolment.notice_keys},
        device_id=enrolment.device_id,
        device_type=enrolment.device_type,
        certificate=certificate,
        key=key,
        broker=enrolment.broker,
    )
    return str(answer["serial"])
