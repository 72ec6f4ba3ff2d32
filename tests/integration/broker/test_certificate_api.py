"""Certificates through the REST API, checked against the real broker: provisioning from a CSR,
renewal by the device itself, rotation, and revocation that cuts a device off."""

import asyncio
import base64
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from kernex_backend.core.config import Settings
from kernex_backend.core.runtime import runtime_of
from kernex_backend.devices.certificates import Pki
from kernex_devstack.broker import EmbeddedBroker
from kernex_protocol.topics import Channel, topic_for
from kernex_provision.authority import write_private_key, write_public
from kernex_provision.certificates import make_csr, new_key, sign_renewal
from tests.conftest import Connector, make_settings
from tests.integration.mqtt_client import Identity, Probe


@pytest.fixture
def settings(database_url: str, broker: EmbeddedBroker) -> Settings:
    return make_settings(
        database_url,
        pki={"ca_dir": broker.ca_dir, "broker_dir": broker.layout.directory},
        # The broker's address without the bridge: what a revocation needs to end a session.
        mqtt={"host": broker.host, "port": broker.port, "ca_file": broker.layout.ca_chain},
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def csr_pem(key: object, cn: str) -> str:
    return make_csr(key, cn).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]


def save_identity(
    tmp_path: Path, broker: EmbeddedBroker, name: str, key: object, cert_pem: str
) -> Identity:
    folder = tmp_path / uuid.uuid4().hex[:6]
    folder.mkdir()
    write_private_key(folder / "key.pem", key)  # type: ignore[arg-type]
    write_public(folder / "cert.pem", cert_pem.encode())
    return Identity(name, broker.layout.ca_chain, folder / "cert.pem", folder / "key.pem")


async def provision(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, key: object
) -> httpx.Response:
    return await client.post(
        f"/api/v1/devices/{name}/certificate",
        json={"csr": csr_pem(key, name), "device_type": "gateway"},
        headers=headers,
    )


async def test_provision_from_csr_registers_and_connects(
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    tmp_path: Path,
) -> None:
    name = unique("csr")
    key = new_key()
    response = await provision(client, write_headers, name, key)
    assert response.status_code == 201, response.text
    body = response.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert f"{cert.serial_number:x}" == body["serial"]
    assert "PRIVATE KEY" not in response.text  # the key never left the "device"

    device = (await client.get(f"/api/v1/devices/{name}", headers=write_headers)).json()
    assert device["device_type"] == "gateway"
    assert device["cert_serial"] == body["serial"]
    assert device["cert_not_after"] is not None

    probe = mqtt_connect(save_identity(tmp_path, broker, name, key, body["certificate"]))
    assert probe.connected.is_set(), probe.error


@pytest.mark.parametrize("problem", ["other-cn", "bad-signature", "not-pem", "no-device-type"])
async def test_bad_csrs_are_refused_with_a_clear_message(
    client: httpx.AsyncClient, write_headers: dict[str, str], problem: str
) -> None:
    name = unique("bad")
    key = new_key()
    body: dict[str, object] = {"csr": csr_pem(key, name), "device_type": "gateway"}
    if problem == "other-cn":
        body["csr"] = csr_pem(key, "someone-else")
    elif problem == "bad-signature":
        der = bytearray(make_csr(key, name).public_bytes(serialization.Encoding.DER))
        der[-3] ^= 0x01  # inside the signature
        body["csr"] = (
            x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
        )
    elif problem == "not-pem":
        body["csr"] = "hello"
    else:
        del body["device_type"]
    response = await client.post(
        f"/api/v1/devices/{name}/certificate", json=body, headers=write_headers
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    expected = {
        "other-cn": "common name must be the device ID",
        "bad-signature": "signature does not verify",
        "not-pem": "not a valid PEM",
        "no-device-type": "give its device_type",
    }[problem]
    assert expected in response.json()["detail"]
    assert (await client.get(f"/api/v1/devices/{name}", headers=write_headers)).status_code == 404


async def test_read_key_cannot_provision_and_no_key_needs_a_proof(
    client: httpx.AsyncClient, read_headers: dict[str, str]
) -> None:
    name = unique("nokey")
    key = new_key()
    assert (await provision(client, read_headers, name, key)).status_code == 403
    anonymous = await client.post(
        f"/api/v1/devices/{name}/certificate", json={"csr": csr_pem(key, name)}
    )
    assert anonymous.status_code == 401


async def test_device_renews_itself_then_old_certificate_is_revoked(
    client: httpx.AsyncClient,
    write_headers: dict[str, str],
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    tmp_path: Path,
) -> None:
    name = unique("rotate")
    old_key = new_key()
    first = (await provision(client, write_headers, name, old_key)).json()

    # The device renews with no API key: new key, new CSR, signed by its current key.
    new_key_ = new_key()
    csr = make_csr(new_key_, name)
    renewal = {
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "current_certificate": first["certificate"],
        "proof": base64.b64encode(sign_renewal(old_key, csr)).decode(),
    }
    renewed = await client.post(f"/api/v1/devices/{name}/certificate", json=renewal)
    assert renewed.status_code == 201, renewed.text
    second = renewed.json()
    assert second["serial"] != first["serial"]

    # A proof made with another key is refused.
    forged = dict(renewal, proof=base64.b64encode(sign_renewal(new_key(), csr)).decode())
    assert (
        await client.post(f"/api/v1/devices/{name}/certificate", json=forged)
    ).status_code == 401

    old_identity = save_identity(tmp_path, broker, name, old_key, first["certificate"])
    new_identity = save_identity(tmp_path, broker, name, new_key_, second["certificate"])
    assert mqtt_connect(new_identity).connected.is_set()

    # Once the new certificate is in use, the old one is revoked; the device is not cut off.
    revoked = await client.post(
        f"/api/v1/devices/{name}/revoke",
        json={"serial": first["serial"], "reason": "superseded"},
        headers=write_headers,
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json() == {
        "device_id": name,
        "revoked_serials": [first["serial"]],
        "device_cut_off": False,
        "broker_reloaded": True,
        "session_ended": False,  # still certified: its session goes on with the new one
    }
    await asyncio.sleep(0.5)  # SIGHUP is handled asynchronously
    assert not mqtt_connect(old_identity, timeout=2).connected.is_set()
    assert mqtt_connect(new_identity).connected.is_set()

    # The revoked certificate can no longer renew.
    stale = dict(renewal, csr=csr_pem(new_key(), name))
    stale_csr = x509.load_pem_x509_csr(stale["csr"].encode())
    stale["proof"] = base64.b64encode(sign_renewal(old_key, stale_csr)).decode()
    refused = await client.post(f"/api/v1/devices/{name}/certificate", json=stale)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]


async def test_revoking_a_device_cuts_it_off_and_is_audited(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    tmp_path: Path,
    backend: Probe,
) -> None:
    name = unique("cut")
    key = new_key()
    issued = (await provision(client, admin_headers, name, key)).json()
    identity = save_identity(tmp_path, broker, name, key, issued["certificate"])
    live = mqtt_connect(identity)
    assert live.connected.is_set()
    live.subscribe(topic_for(name, Channel.DEPLOYMENT))

    response = await client.post(
        f"/api/v1/devices/{name}/revoke", json={"reason": "keyCompromise"}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["device_cut_off"] is True
    assert response.json()["session_ended"] is True
    assert live.disconnected.wait(5), "the revoked device's session is still open"
    await asyncio.sleep(0.5)
    backend.publish(topic_for(name, Channel.DEPLOYMENT), b"after-revoke")
    assert live.drain(wait=0.5) == []  # nothing reached it
    assert not mqtt_connect(identity, timeout=2).connected.is_set()  # and cannot come back

    again = await client.post(f"/api/v1/devices/{name}/revoke", headers=admin_headers)
    assert again.status_code == 409
    unknown_serial = await client.post(
        f"/api/v1/devices/{name}/revoke", json={"serial": "abc123"}, headers=admin_headers
    )
    assert unknown_serial.status_code == 404
    events = await client.get(
        "/api/v1/audit-events", params={"object_id": name}, headers=admin_headers
    )
    actions = [e["action"] for e in events.json()["data"]]
    assert actions[:2] == ["device.certificate_revoke", "device.certificate_issue"]
    assert events.json()["data"][0]["details"]["reason"] == "keyCompromise"


async def test_a_revoked_device_given_a_new_certificate_is_let_back_in_at_once(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    broker: EmbeddedBroker,
    mqtt_connect: Connector,
    tmp_path: Path,
    backend: Probe,
) -> None:
    """Revocation puts the identity on the ACL's deny list; a new certificate takes it off with
    the same reload, so the device works again without waiting for an unrelated one."""
    name = unique("back")
    first = (await provision(client, admin_headers, name, new_key())).json()
    assert first["serial"]
    revoked = await client.post(f"/api/v1/devices/{name}/revoke", headers=admin_headers)
    assert revoked.json()["device_cut_off"] is True
    key = new_key()
    again = await provision(client, admin_headers, name, key)
    assert again.status_code == 201, again.text
    await asyncio.sleep(0.5)  # the broker's reload
    device = mqtt_connect(save_identity(tmp_path, broker, name, key, again.json()["certificate"]))
    assert device.connected.is_set(), device.error
    device.subscribe(topic_for(name, Channel.DEPLOYMENT))
    backend.publish(topic_for(name, Channel.DEPLOYMENT), b"welcome back")
    device.wait_for(topic_for(name, Channel.DEPLOYMENT), b"welcome back")
    backend.publish(topic_for(name, Channel.DEPLOYMENT), b"", retain=True)


async def test_without_a_ca_the_certificate_endpoints_answer_503(database_url: str) -> None:
    from kernex_backend.main import create_app

    app = create_app(make_settings(database_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/api/v1/devices/x/certificate", json={"csr": "x"}, headers={}
            )
    assert response.status_code == 503
    assert "KERNEX_PKI__CA_DIR" in response.json()["detail"]


async def test_certificates_issued_offline_reach_the_device_row(
    app: FastAPI, client: httpx.AsyncClient, write_headers: dict[str, str], broker: EmbeddedBroker
) -> None:
    from kernex_backend.core.db import create_sessionmaker
    from kernex_backend.devices.certificates import sync_from_index
    from kernex_provision.certificates import CertificateKind

    name = unique("offline")
    await client.post(
        "/api/v1/devices", json={"id": name, "device_type": "gw"}, headers=write_headers
    )
    # As `kernex-provision issue-device` does, straight on the CA directory.
    cert = broker.authority.issue(
        new_key().public_key(), kind=CertificateKind.DEVICE, common_name=name, days=30
    )
    before = (await client.get(f"/api/v1/devices/{name}", headers=write_headers)).json()
    assert before["cert_serial"] is None
    async with create_sessionmaker(runtime_of(app).engine)() as session:
        assert await sync_from_index(session=session, pki=runtime_of(app).get(Pki)) >= 1
    after = (await client.get(f"/api/v1/devices/{name}", headers=write_headers)).json()
    assert after["cert_serial"] == f"{cert.serial_number:x}"
    assert after["cert_not_after"].startswith(cert.not_valid_after_utc.date().isoformat())
