"""`kernex-agent` exit statuses: 2 for what a restart cannot fix, 0 for a valid configuration."""

from pathlib import Path

import pytest

from kernex_agent.cli import main
from kernex_provision.authority import CertificateAuthority
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.kit import BrokerAddress, write_kit


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    authority = CertificateAuthority.initialise(tmp_path / "ca", organization="Test")
    key = new_key()
    cert = authority.issue(key.public_key(), kind=CertificateKind.DEVICE, common_name="d-1", days=1)
    out = tmp_path / "kit"
    write_kit(
        out,
        authority,
        device_id="d-1",
        device_type="gw",
        certificate=cert,
        key=key,
        broker=BrokerAddress("localhost", 8883),
    )
    return out


def test_check_config_accepts_a_kit(
    kit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERNEX_AGENT_UPDATE__STATE_DIR", str(tmp_path / "state"))
    assert main(["--config", str(kit / "agent.toml"), "--check-config"]) == 0
    assert "d-1 is valid" in capsys.readouterr().out


def test_configuration_errors_exit_2(
    kit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KERNEX_AGENT_UPDATE__STATE_DIR", str(tmp_path / "state"))
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "no configuration file" in capsys.readouterr().err
    (kit / "device.key").unlink()
    assert main(["--config", str(kit / "agent.toml"), "--check-config"]) == 2
    assert "cannot start" in capsys.readouterr().err
