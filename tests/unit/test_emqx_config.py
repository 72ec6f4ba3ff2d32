"""`kernex-provision broker-config --broker emqx`: the clustered broker path renders the same
security model as Mosquitto's, in EMQX's formats. The HOCON is parsed (pyhocon) and the ACL's
Erlang terms are read rule by rule; no EMQX runs here (docs/security.md says what differs)."""

import re
from pathlib import Path

from pyhocon import ConfigFactory  # type: ignore[import-untyped]
from typer.testing import CliRunner

from kernex_provision.authority import CertificateAuthority
from kernex_provision.broker import BrokerLayout
from kernex_provision.certificates import CertificateKind, new_key
from kernex_provision.cli import app

RULE = re.compile(r"^\{(allow|deny),\s*(.+)\}\.$")


def rendered(
    tmp_path: Path, *, crl_url: str | None = None
) -> tuple[Path, Path, CertificateAuthority]:
    ca_dir = tmp_path / "ca"
    authority = CertificateAuthority.initialise(ca_dir, crl_url=crl_url)
    for name in ("good-1", "bad-1"):
        authority.issue(
            new_key().public_key(), kind=CertificateKind.DEVICE, common_name=name, days=30
        )
    authority.revoke(common_name="bad-1", reason="keyCompromise")
    broker = tmp_path / "broker"
    runner = CliRunner()
    issue = ["issue-server", "--ca", str(ca_dir), "--out", str(broker), "--dns", "emqx"]
    issued = runner.invoke(app, issue)
    assert issued.exit_code == 0, issued.output
    result = runner.invoke(
        app,
        ["broker-config", "--ca", str(ca_dir), "--out", str(broker), "--broker", "emqx"],
    )
    assert result.exit_code == 0, result.output
    return broker / "emqx.conf", broker / "acl.conf", authority


def rules(acl: Path) -> list[tuple[str, str]]:
    lines = [
        line.strip()
        for line in acl.read_text().splitlines()
        if line.strip() and not line.startswith("%%")
    ]
    parsed = [RULE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    return [(m.group(1), m.group(2)) for m in parsed if m]


def test_listener_is_mutual_tls_only_with_the_cn_as_identity(tmp_path: Path) -> None:
    conf, acl, _ = rendered(tmp_path)
    config = ConfigFactory.parse_file(str(conf))
    ssl = config["listeners"]["ssl"]["default"]
    assert ssl["bind"] == "0.0.0.0:8883"
    options = ssl["ssl_options"]
    assert options["verify"] == "verify_peer" and options["fail_if_no_peer_cert"] is True
    assert options["versions"] == ["tlsv1.3", "tlsv1.2"]
    layout = BrokerLayout(conf.parent.resolve())
    assert Path(options["cacertfile"]) == layout.ca_chain
    assert Path(options["keyfile"]) == layout.server_key
    for plain in ("tcp", "ws", "wss"):
        assert config["listeners"][plain]["default"]["enable"] is False
    assert config["mqtt"]["peer_cert_as_username"] == "cn"
    assert config["mqtt"]["peer_cert_as_clientid"] == "cn"
    authorization = config["authorization"]
    assert authorization["no_match"] == "deny" and authorization["deny_action"] == "disconnect"
    assert authorization["cache"]["enable"] is False  # a revocation applies at once
    assert Path(authorization["sources"][0]["path"]) == acl.resolve()
    assert config["authentication"] == []  # the TLS handshake is the authentication
    # No distribution point named: EMQX has nowhere to fetch a CRL from.
    assert options["enable_crl_check"] is False


def test_a_crl_distribution_url_turns_the_crl_check_on(tmp_path: Path) -> None:
    conf, _, authority = rendered(tmp_path, crl_url="http://kernex-api:8000/api/v1/pki/crl")
    config = ConfigFactory.parse_file(str(conf))
    assert config["listeners"]["ssl"]["default"]["ssl_options"]["enable_crl_check"] is True
    assert config["crl_cache"]["refresh_interval"].total_seconds() == 60
    assert authority.crl_url == "http://kernex-api:8000/api/v1/pki/crl"


def test_acl_denies_the_revoked_first_grants_the_service_and_ends_in_deny(
    tmp_path: Path,
) -> None:
    _, acl, _ = rendered(tmp_path)
    parsed = rules(acl)
    assert parsed[0] == ("deny", '{user, "bad-1"}, all, ["#"]')
    assert ("allow", '{user, "kernex-backend"}, all, ["kernex/v1/devices/#"]') in parsed
    assert parsed[-1] == ("deny", "all")
    device_rules = [body for verdict, body in parsed if body.startswith("all, ")]
    assert all("${username}" in body for body in device_rules)
    publish = next(b for b in device_rules if b.startswith("all, publish"))
    assert "kernex/v1/devices/${username}/deployment" not in publish  # devices only read it
    assert not any(body.startswith("all, all") for verdict, body in parsed if verdict == "allow")
    assert "good-1" not in acl.read_text()  # devices are granted by pattern, never by name
