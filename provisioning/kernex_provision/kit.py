"""Device kits: everything one device needs to connect, in one folder.

device.crt        the device certificate
device.key        its private key (0600; absent when the device made its own CSR)
ca-chain.pem      the CAs that sign the broker's certificate
release-keys/     trusted release public keys (*.pub)
notice-keys/      the backend's notice public keys (*.pub)
agent.toml        a ready agent configuration with paths relative to itself
"""

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from kernex_protocol.ids import validate_device_id
from kernex_provision.authority import (
    NOTICE_KEYS,
    RELEASE_KEYS,
    CertificateAuthority,
    pem,
    write_private_key,
    write_public,
)
from kernex_provision.certificates import PrivateKey

DEVICE_CERT = "device.crt"
DEVICE_KEY = "device.key"
CA_CHAIN = "ca-chain.pem"
AGENT_CONFIG = "agent.toml"
# The same rule as a release manifest's device_type.
DEFAULT_PRODUCTS = ("app",)
DEVICE_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where devices reach the broker."""

    host: str
    port: int = 8883


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_config(
    device_id: str,
    device_type: str,
    broker: BrokerAddress,
    *,
    has_key: bool,
    products: tuple[str, ...] = DEFAULT_PRODUCTS,
) -> str:
    """The agent.toml of a kit (see device-agent/README.md for every option)."""
    product_list = ", ".join(_toml_string(p) for p in products)
    key_line = (
        f"key_file = {_toml_string(DEVICE_KEY)}"
        if has_key
        else "# key_file = <the key the CSR was made with>"
    )
    return f"""# Kernex agent configuration for {device_id}, from kernex-provision issue-device.
# Relative paths are relative to this file.
device_id = {_toml_string(device_id)}
# Releases for other device types are refused.
device_type = {_toml_string(device_type)}

[mqtt]
host = {_toml_string(broker.host)}
port = {broker.port}
ca_file = {_toml_string(CA_CHAIN)}
cert_file = {_toml_string(DEVICE_CERT)}
{key_line}

[release]
trusted_keys_dir = {_toml_string(RELEASE_KEYS)}
notice_keys_dir = {_toml_string(NOTICE_KEYS)}

[update]
# Release names this device runs; releases of anything else are refused.
products = [{product_list}]
"""


def write_kit(
    out: Path,
    authority: CertificateAuthority,
    *,
    device_id: str,
    device_type: str,
    certificate: x509.Certificate,
    key: PrivateKey | None,
    broker: BrokerAddress,
    products: tuple[str, ...] = DEFAULT_PRODUCTS,
) -> None:
    """Write a device kit into `out` (created if needed), with the CA's chain and keys."""
    write_kit_files(
        out,
        chain_pem=authority.chain_pem,
        key_sources={
            RELEASE_KEYS: authority.directory / RELEASE_KEYS,
            NOTICE_KEYS: authority.directory / NOTICE_KEYS,
        },
        device_id=device_id,
        device_type=device_type,
        certificate=certificate,
        key=key,
        broker=broker,
        products=products,
    )


def write_kit_files(
    out: Path,
    *,
    chain_pem: bytes,
    key_sources: dict[str, Path | None],
    device_id: str,
    device_type: str,
    certificate: x509.Certificate,
    key: PrivateKey | None,
    broker: BrokerAddress,
    products: tuple[str, ...] = DEFAULT_PRODUCTS,
) -> None:
    """Write a device kit into `out`: `key_sources` maps each kit key folder (release-keys,
    notice-keys) to the folder whose `*.pub` files it gets (None: left empty)."""
    validate_device_id(device_id)
    if not DEVICE_TYPE_RE.fullmatch(device_type):
        raise ValueError("device type must be 1-64 characters from A-Z a-z 0-9 . _ -")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_public(out / DEVICE_CERT, pem(certificate))
    if key is not None:
        write_private_key(out / DEVICE_KEY, key)
    write_public(out / CA_CHAIN, chain_pem)
    for folder in (RELEASE_KEYS, NOTICE_KEYS):
        keys_out = out / folder
        keys_out.mkdir(exist_ok=True)
        source = key_sources.get(folder)
        if source is not None and source.is_dir():
            for public_key in sorted(source.glob("*.pub")):
                shutil.copyfile(public_key, keys_out / public_key.name)
    config = agent_config(
        device_id, device_type, broker, has_key=key is not None, products=products
    )
    write_public(out / AGENT_CONFIG, config.encode())
