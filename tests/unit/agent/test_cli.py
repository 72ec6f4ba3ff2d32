"""`kernex-agent`'s command line, and its exit statuses: 2 for what a restart cannot fix, 0 for a
valid configuration."""

from pathlib import Path

import pytest

from kernex_agent.cli import _plain, main, parse_args, parse_with_argparse
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


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--config", "/etc/kernex/agent.toml"],
        ["--config", "relative/agent.toml"],
        ["--config=/srv/agent.toml"],
        ["--check-config"],
        ["--config", "a.toml", "--check-config"],
        ["--health", "--config", "a.toml"],
        ["--connect-probe", "--config=a b.toml"],
        ["--config", "a.toml", "--config", "b.toml"],  # the last one counts
        ["--health", "--health", "--connect-probe", "--check-config"],
    ],
)
def test_the_usual_command_lines_read_as_argparse_reads_them(argv: list[str]) -> None:
    assert _plain(argv) is not None
    assert _plain(argv) == parse_with_argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["--conf", "a.toml"],  # an abbreviation argparse accepts
        ["--config"],
        ["--config", "--health"],
        ["--config="],
        ["--config", "a.toml", "extra"],
        ["--", "--health"],
        ["-h"],
    ],
)
def test_any_other_command_line_goes_to_argparse(argv: list[str]) -> None:
    assert _plain(argv) is None


def test_argparse_answers_what_the_plain_reader_leaves(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--conf", "x.toml", "--heal"]).config == Path("x.toml")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--config"])
    assert exited.value.code == 2
    assert "expected one argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        parse_args(["--version"])
    assert exited.value.code == 0
    assert "kernex-agent 0.1.0" in capsys.readouterr().out
