"""The upgrade order of docs/upgrades.md, run for real: the schema is migrated first while the
previous release still serves, then the new backend joins it, then the old one goes.

"The previous release" is this repository's own code from just before the newest migration was
added (from git history), run from its source tree beside the installed one. It must do its
whole job on the new schema: devices online, heartbeats stored, a deployment to completion;
then the new backend and the old one side by side, then the new one alone."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet, eventually

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VERSIONS = REPO / "migrations" / "versions"


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def previous_release(folder: Path) -> tuple[str, Path]:
    """The commit before the newest migration was added, its backend and protocol unpacked in
    `folder`; skips where the checkout has no such history (an exported tree, a shallow
    clone)."""
    newest = max(VERSIONS.glob("20*.py")).relative_to(REPO)
    added = git("log", "--diff-filter=A", "--format=%H", "-1", "--", str(newest))
    if not added:
        pytest.skip(f"no git history for {newest}: the previous release cannot be read")
    commit = f"{added}^"
    if not git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"):
        # A shallow clone: the commit that added it is the oldest one fetched.
        pytest.skip(f"the history before {added[:10]} is not in this clone (shallow?)")
    archive = subprocess.run(
        ["git", "archive", commit, "backend", "protocol"], cwd=REPO, capture_output=True, check=True
    )
    folder.mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return git("rev-parse", "--short", commit), folder


def deploy_and_wait(fleet: Fleet, version: str, device_ids: list[str]) -> None:
    deployment = fleet.deploy(fleet.upload(version), device_ids)
    eventually(
        lambda: all(e["state"] == "succeeded" for e in fleet.executions(deployment).values()),
        timeout=90,
        what=f"{version} succeeded on every device",
    )


def test_the_previous_release_serves_on_the_new_schema_then_hands_over(
    fleet: Fleet, tmp_path: Path
) -> None:
    commit, old = previous_release(tmp_path / "previous")
    old_env = {"PYTHONPATH": f"{old / 'backend'}:{old / 'protocol'}"}
    # The old source is what such a process imports, not the installed (new) one.
    loaded = subprocess.run(
        [sys.executable, "-c", "import kernex_backend; print(kernex_backend.__file__)"],
        env={**fleet.base_env, **old_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.startswith(str(old)), loaded
    assert (old / "backend").is_dir() and not (old / "migrations").exists()

    # 1. The database is at the new head already (the test database is migrated by this
    #    checkout); the previous release serves on it: API, MQTT bridge, notifier, rollouts.
    old_api = fleet.start_api("kernex-backend-old", extra_env=old_env)
    agents = [fleet.add_device() for _ in range(2)]
    ids = [a.device_id for a in agents]  # type: ignore[attr-defined]
    for agent in agents:
        agent.start()
    eventually(lambda: all(fleet.device(i)["online"] for i in ids), what=f"online via {commit}")
    eventually(lambda: all(fleet.device(i)["last_seen_at"] for i in ids), what="heartbeats")
    deploy_and_wait(fleet, "1.0.0", ids)

    # 2. The new backend joins (a worker: same subscriptions, notifier and rollouts), both
    #    versions side by side as during a rolling update.
    new_worker = fleet.start_worker("kernex-backend-new")
    eventually(lambda: '"mqtt_connected"' in new_worker.log(), what="new worker connected")
    deploy_and_wait(fleet, "1.1.0", ids)

    # 3. The old one goes; the new one serves the API as well.
    old_api.stop()  # uvicorn ends on SIGTERM by re-raising it, once it has shut down cleanly
    assert '"backend_stopped"' in old_api.log(), old_api.log()[-3000:]
    fleet.start_api("kernex-backend-new-api")
    deploy_and_wait(fleet, "1.2.0", ids)
    for device_id in ids:
        assert fleet.device(device_id)["current_version"] == "1.2.0"
    for process in (old_api, new_worker):
        assert "Traceback" not in process.log(), process.log()[-3000:]
