"""The disk of the backend's CA directory full while it issues a certificate: the request is
answered 503 with Retry-After, nothing is half-written (the issuance index as it was, no
temporary file, no device registered), and issuing works again once there is room."""

import json
import shutil
from pathlib import Path

import httpx
import pytest

from kernex_backend.core.config import Settings
from kernex_devstack.broker import EmbeddedBroker
from kernex_provision.certificates import new_key
from tests.conftest import Mount, fill, make_settings
from tests.integration.broker.test_certificate_api import provision, unique

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def temporary_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def ca_disk(tmp_path: Path, small_disk: Mount, broker: EmbeddedBroker) -> Path:
    """A copy of the test CA on a 4 MiB disk of its own."""
    directory = tmp_path / "ca"
    small_disk(directory, 4 * MIB)
    shutil.copytree(broker.ca_dir, directory, dirs_exist_ok=True)
    return directory


@pytest.fixture
def settings(database_url: str, broker: EmbeddedBroker, ca_disk: Path) -> Settings:
    return make_settings(
        database_url, pki={"ca_dir": ca_disk, "broker_dir": broker.layout.directory}
    )


@pytest.mark.reliability(
    "Faults",
    "the disk of the backend's CA directory full while it issues a certificate",
    "answered 503 with Retry-After; the issuance index as it was, no temporary file, no"
    " device registered; issuing works again once there is room",
)
async def test_a_full_ca_disk_refuses_issuing_and_corrupts_nothing(
    ca_disk: Path, client: httpx.AsyncClient, write_headers: dict[str, str]
) -> None:
    before = await provision(client, write_headers, unique("before"), new_key())
    assert before.status_code == 201, before.text
    index = (ca_disk / "index.json").read_text()
    filler = fill(ca_disk)
    name, key = unique("full"), new_key()
    refused = await provision(client, write_headers, name, key)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) > 0
    assert (ca_disk / "index.json").read_text() == index
    json.loads(index)
    assert temporary_files(ca_disk) == []
    missing = await client.get(f"/api/v1/devices/{name}", headers=write_headers)
    assert missing.status_code == 404
    filler.unlink()
    again = await provision(client, write_headers, name, key)
    assert again.status_code == 201, again.text
