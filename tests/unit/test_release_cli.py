"""`kernex-release`: keygen, sign, verify and approve-rollback, as the release team runs them."""

import datetime as dt
import json
from pathlib import Path

from typer.testing import CliRunner

from kernex_protocol.manifest import (
    SignedRelease,
    SignedRollback,
    load_trusted_keys,
    verify_rollback,
)
from kernex_provision.release import app

runner = CliRunner()


def test_release_workflow_including_a_rollback_approval(tmp_path: Path) -> None:
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "keys")]).exit_code == 0
    key = next((tmp_path / "keys").glob("*.key"))
    bundle = tmp_path / "app-1.0.0.tar.gz"
    bundle.write_bytes(b"bundle bytes")
    signed = runner.invoke(
        app,
        [
            "sign",
            str(bundle),
            "--key",
            str(key),
            "--name",
            "app",
            "--version",
            "1.0.0",
            "--device-type",
            "gw",
        ],
    )
    assert signed.exit_code == 0, signed.output
    release = tmp_path / "app-1.0.0.tar.gz.release.json"
    checked = runner.invoke(
        app, ["verify", str(release), "--keys", str(tmp_path / "keys"), "--file", str(bundle)]
    )
    assert checked.exit_code == 0, checked.output

    approved = runner.invoke(
        app,
        ["approve-rollback", str(release), "--key", str(key), "--from-version", "1.2.0"],
    )
    assert approved.exit_code == 0, approved.output
    document = json.loads((tmp_path / "app-1.0.0.tar.gz.rollback.json").read_text())
    rollback = SignedRollback.from_document(document)
    manifest = SignedRelease.from_json(release.read_bytes()).manifest
    assert rollback.approval.permits(manifest, installed_version="1.2.0")
    assert not rollback.approval.permits(manifest, installed_version="1.1.0")
    now = dt.datetime.now(dt.UTC)
    assert not rollback.approval.expired(now)
    assert rollback.approval.expired(now + dt.timedelta(days=8))  # a week by default
    assert verify_rollback(rollback, load_trusted_keys(tmp_path / "keys")) == rollback.key_id

    bundle.write_bytes(b"tampered")
    mismatch = runner.invoke(
        app, ["verify", str(release), "--keys", str(tmp_path / "keys"), "--file", str(bundle)]
    )
    assert mismatch.exit_code == 1 and "does not match" in mismatch.output
