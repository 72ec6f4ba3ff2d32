"""The agent updates itself through an ordinary deployment (kernex_agent/self_update.py), end to
end: the bundle holds the agent's own code; the running agent installs it, proves it by letting
the new code connect as the device, commits, reports, and exits for its service manager to start
it again, and the launcher runs the new version, which the backend then sees in heartbeats. A
new agent that cannot even import is rolled back, and the old agent runs on."""

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet import Fleet, eventually, logs_of

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "kernex_agent": REPO / "device-agent" / "kernex_agent",
    "kernex_protocol": REPO / "protocol" / "kernex_protocol",
}
RESTART_EXIT_CODE = 75


def agent_bundle(version: str, *, broken: bool = False) -> bytes:
    """The agent's own packages as a release, with `version` as its __version__."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for package, source in PACKAGES.items():
            for path in sorted(source.rglob("*")):
                if "__pycache__" in path.parts or not path.is_file():
                    continue
                data = path.read_bytes()
                if (
                    package == "kernex_agent"
                    and path.name == "__init__.py"
                    and path.parent == source
                ):
                    data = f'"""Kernex device agent."""\n\n__version__ = "{version}"\n'.encode()
                    if broken:
                        data += b'raise ImportError("a broken build")\n'
                info = tarfile.TarInfo(f"{package}/{path.relative_to(source)}")
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def upload_agent(fleet: Fleet, version: str, **options: Any) -> dict[str, Any]:
    return fleet.upload(version, product="kernex-agent", content=agent_bundle(version, **options))


def test_agent_updates_itself_and_restarts_into_the_new_version(fleet: Fleet) -> None:
    api_process = fleet.start_api()
    agent = fleet.add_device(update__agent_root=str(fleet.root / "agent-tree"))
    device_id = agent.device_id  # type: ignore[attr-defined]
    agent.start()
    before = eventually(
        lambda: (d := fleet.device(device_id))["agent_version"] and d, what="first heartbeat"
    )["agent_version"]
    assert before != "9.1.0"

    deployment = fleet.deploy(upload_agent(fleet, "9.1.0"), [device_id])
    execution = eventually(
        lambda: (e := fleet.executions(deployment)[device_id])["state"] == "succeeded" and e,
        what="the agent's own update succeeded",
        explain=logs_of(agent, api_process),
    )
    assert execution["device_state"] == "committed"
    # The old agent steps aside for its service manager to start the committed one.
    assert agent.wait_exit(30) == RESTART_EXIT_CODE
    assert (fleet.root / "agent-tree" / "current").resolve().name == "9.1.0"

    agent.start()  # what systemd or the container's restart policy does
    eventually(
        lambda: fleet.device(device_id)["agent_version"] == "9.1.0",
        what="heartbeats from the new agent",
        explain=logs_of(agent, api_process),
    )
    started = agent.wait_log("agent.starting")
    assert started["agent_version"] == "9.1.0"

    # The new agent still updates the application as before.
    app = fleet.deploy(fleet.upload("2.0.0"), [device_id])
    eventually(
        lambda: fleet.executions(app)[device_id]["state"] == "succeeded",
        what="an application update from the new agent",
        explain=logs_of(agent, api_process),
    )


def test_a_new_agent_that_cannot_start_is_rolled_back_and_the_old_one_runs_on(
    fleet: Fleet,
) -> None:
    api_process = fleet.start_api()
    tree = fleet.root / "agent-tree"
    agent = fleet.add_device(update__agent_root=str(tree))
    device_id = agent.device_id  # type: ignore[attr-defined]
    agent.start()
    before = eventually(lambda: fleet.device(device_id)["agent_version"], what="first heartbeat")

    deployment = fleet.deploy(upload_agent(fleet, "9.2.0", broken=True), [device_id])
    execution = eventually(
        lambda: (e := fleet.executions(deployment)[device_id])["state"] == "rolled_back" and e,
        what="the broken agent refused",
        explain=logs_of(agent, api_process),
    )
    assert execution["error_code"] == "health_check_failed"
    assert execution["device_state"] == "rolled_back"
    assert agent.process is not None and agent.process.poll() is None, "the old agent stopped"
    assert not (tree / "current").exists(), "the broken agent is still selected"

    # The old agent is back on the broker and keeps serving: heartbeats and updates.
    app = fleet.deploy(fleet.upload("3.0.0"), [device_id])
    eventually(
        lambda: fleet.executions(app)[device_id]["state"] == "succeeded",
        what="an application update after the rollback",
        explain=logs_of(agent, api_process),
    )
    assert fleet.device(device_id)["agent_version"] == before
    # A restart (power cycle) runs the old agent too: nothing of the broken one is launched.
    assert agent.terminate() == 0
    agent.start()
    assert agent.wait_log("agent.starting")["agent_version"] == before
