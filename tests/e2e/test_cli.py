"""The `kernex` CLI, run as the installed command against a real backend over HTTP with real
agents on the real broker: every command group, the `--json` shapes scripts rely on, and the
documented exit statuses (0 done, 1 refused or a rollout that did not succeed, 2 usage, 3 not
signed in or the key refused, 4 unreachable)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from kernex_devstack.ports import free_port
from tests.e2e.fleet import Fleet, eventually
from tests.integration.agent.harness import DEVICE_TYPE, app_archive

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


class Cli:
    """Runs `kernex` with its own config directory; `env` adds or overrides variables."""

    def __init__(self, home: Path) -> None:
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KERNEX_URL", "KERNEX_API_KEY", "KERNEX_PROFILE")
        }
        self.env["XDG_CONFIG_HOME"] = str(home)
        self.env["COLUMNS"] = "200"

    def __call__(
        self, *args: str, code: int = 0, env: dict[str, str] | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "kernex"), *args],
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)


def signed_bundle(fleet: Fleet, folder: Path, version: str, *, healthy: bool = True) -> Path:
    """An application bundle signed with `kernex-release sign`, as an operator makes one."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "release.key"
    if not key.exists():
        key.write_bytes(
            fleet.release_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key.chmod(0o600)
    bundle = folder / f"app-{version}.tar.gz"
    bundle.write_bytes(app_archive(version, healthy=healthy))
    subprocess.run(
        [
            str(BIN / "kernex-release"),
            "sign",
            str(bundle),
            "--key",
            str(key),
            "--name",
            "app",
            "--version",
            version,
            "--device-type",
            DEVICE_TYPE,
        ],
        check=True,
        capture_output=True,
    )
    return bundle


def test_cli_drives_a_fleet_end_to_end(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start_api()
    url = f"http://127.0.0.1:{fleet.port}"
    cli = Cli(tmp_path / "home")

    # Not signed in; a wrong key; then a good one, stored 0600.
    assert "kernex login" in cli("devices", "ls", code=3).stderr
    cli("login", "--url", url, "--api-key", "kx_wrong", code=3)
    cli("login", "--url", url, "--api-key", fleet.token)
    config = tmp_path / "home" / "kernex" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert fleet.token not in cli("profiles").stdout

    agents = [fleet.add_device() for _ in range(3)]
    ids = sorted(a.device_id for a in agents)  # type: ignore[attr-defined]
    for agent in agents:
        agent.start()
    eventually(lambda: all(fleet.device(i)["online"] for i in ids), what="devices online")

    # Devices: list, tag, filter, untag, show, a missing one.
    listed = cli.json("devices", "ls")
    assert sorted(d["id"] for d in listed) == ids
    canary, *rest = ids
    tagged = cli.json("devices", "tag", canary, "ring=canary", "site=berlin")
    assert tagged["tags"] == {"ring": "canary", "site": "berlin"}
    assert [d["id"] for d in cli.json("devices", "ls", "--tag", "ring=canary")] == [canary]
    assert cli.json("devices", "untag", canary, "site")["tags"] == {"ring": "canary"}
    assert cli.json("devices", "show", canary)["online"] is True
    # Its presence history: the birth message that brought it online, newest first.
    history = cli.json("devices", "presence", canary, "--limit", "5")
    assert history and history[0]["online"] is True and history[0]["reason"] is None
    assert "PRESENCE" in cli("devices", "presence", canary).stdout
    table = cli("devices", "ls", "--online").stdout
    assert all(i in table for i in ids) and "online" in table
    missing = cli("devices", "show", "no-such-device", code=1)
    assert missing.stderr.count("\n") == 1 and "404" in missing.stderr
    assert "[" in missing.stderr  # the problem type, e.g. [not-found]
    cli("devices", "tag", canary, "not-a-pair", code=2)

    # Bundles: upload with the signature file beside it, list, show.
    bundle_file = signed_bundle(fleet, tmp_path / "release", "1.0.0")
    uploaded = cli.json("bundles", "upload", str(bundle_file))
    assert uploaded["name"] == "app" and uploaded["version"] == "1.0.0"
    assert [b["id"] for b in cli.json("bundles", "ls")] == [uploaded["id"]]
    assert cli.json("bundles", "show", uploaded["id"])["sha256"] == uploaded["sha256"]
    unsigned = tmp_path / "unsigned.tar.gz"
    unsigned.write_bytes(b"x")
    assert "sign the bundle first" in cli("bundles", "upload", str(unsigned), code=2).stderr

    # Preview, then deploy to the canary ring and watch it finish.
    plan = cli.json("deploy", "app@1.0.0", "--to", "ring=canary", "--preview")
    assert plan["devices"] == 1
    assert cli.json("deployments", "ls") == []  # the preview created nothing
    created = cli.json("deploy", "app@1.0.0", "--to", "ring=canary", "--waves", "1,100%")
    watched = cli("deployments", "watch", created["id"], "--json")
    lines = [json.loads(chunk) for chunk in _json_documents(watched.stdout)]
    final = lines[-1]["final"]
    assert final["status"] == "completed" and final["outcome"] == "succeeded"
    assert any(line.get("event") == "completed" for line in lines[:-1])

    # A bad build to the rest: watch says which devices failed and why, and exits 1.
    broken = signed_bundle(fleet, tmp_path / "release", "2.0.0", healthy=False)
    cli.json("bundles", "upload", str(broken))
    bad = cli.json("deploy", "app@2.0.0", "--device", rest[0], "--device", rest[1])
    shown = cli("deployments", "watch", bad["id"], code=1).stdout
    assert "health_check_failed" in shown and rest[0] in shown and rest[1] in shown
    assert "outcome failed" in shown
    assert cli.json("deployments", "show", bad["id"])["outcome"] == "failed"
    listed = {d["id"]: d["outcome"] for d in cli.json("deployments", "ls")}
    assert listed == {created["id"]: "succeeded", bad["id"]: "failed"}
    assert "OUTCOME" in cli("deployments", "ls").stdout

    # Controls: a deployment soaking after its first wave, paused, resumed, canceled.
    gated = cli.json(
        "deploy",
        "app@1.0.0",
        "--all",
        "--waves",
        "1,100%",
        "--soak",
        "3600",
        "--success-threshold",
        "0%",
    )
    eventually(
        lambda: cli.json("deployments", "show", gated["id"])["status"] in ("running", "paused"),
        what="started",
    )
    assert cli.json("deployments", "pause", gated["id"])["status"] == "paused"
    resumed = cli.json("deployments", "resume", gated["id"])
    assert resumed["status"] == "running", (resumed["pause_reason"], resumed["waiting_for"])
    assert cli.json("deployments", "cancel", gated["id"], "--yes")["status"] == "canceled"
    refused = cli("deployments", "resume", gated["id"], code=1)
    assert "409" in refused.stderr
    assert {d["id"] for d in cli.json("deployments", "ls")} == {
        created["id"],
        bad["id"],
        gated["id"],
    }

    # Keys and audit (admin): a read key cannot deploy.
    reader = cli.json("keys", "create", "dashboard", "--scope", "read")
    assert reader["scopes"] == ["read"] and reader["token"]
    as_reader = {"KERNEX_URL": url, "KERNEX_API_KEY": reader["token"]}
    cli("devices", "ls", env=as_reader)
    forbidden = cli("deploy", "app@1.0.0", "--all", env=as_reader, code=3)
    assert "403" in forbidden.stderr
    assert reader["id"] in {k["id"] for k in cli.json("keys", "ls")}
    cli.json("keys", "revoke", reader["id"])
    cli("devices", "ls", env=as_reader, code=3)
    actions = {event["action"] for event in cli.json("audit", "ls", "--limit", "200")}
    assert {"device.update", "deployment.create", "api_key.create"} <= actions

    # Usage errors and an unreachable server.
    cli("deploy", "app@1.0.0", code=2)
    nowhere = {"KERNEX_URL": f"http://127.0.0.1:{free_port()}", "KERNEX_API_KEY": "kx_x"}
    assert "cannot reach" in cli("devices", "ls", env=nowhere, code=4).stderr


def _json_documents(text: str) -> list[str]:
    """Split concatenated pretty-printed JSON documents."""
    decoder = json.JSONDecoder()
    out, index = [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        value, end = decoder.raw_decode(text, index)
        out.append(json.dumps(value))
        index = end
    return out
