"""The self-update launcher's decisions and the agent tree's rollback, on files only (the whole
flow against a real broker and backend: tests/e2e/test_agent_self_update.py)."""

from pathlib import Path

import pytest

from kernex_agent import self_update
from kernex_agent.config import AgentConfig, ConfigError, load_config
from kernex_agent.update.installer import DirectoryInstaller
from tests.unit.agent.test_config import write
from tests.unit.agent.test_installer import make_bundle


def agent_release(tmp_path: Path, version: str) -> Path:
    return make_bundle(
        tmp_path / f"agent-{version}.tgz",
        {"kernex_agent/__init__.py": f'__version__ = "{version}"\n'.encode()},
    )


@pytest.fixture
def config_with_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentConfig:
    monkeypatch.delenv(self_update.LAUNCHED_ENV, raising=False)
    environ = {
        "KERNEX_AGENT_UPDATE__AGENT_ROOT": str(tmp_path / "agent"),
        "KERNEX_AGENT_UPDATE__STATE_DIR": str(tmp_path / "state"),
        "KERNEX_AGENT_UPDATE__INSTALL_ROOT": str(tmp_path / "app"),
    }
    return load_config(write(tmp_path), environ=environ)


def test_nothing_to_launch_without_a_tree_or_a_committed_agent(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path), environ={})
    assert plain.update.agent_root is None
    assert self_update.launch_target(plain) is None


def test_launches_the_committed_agent_until_it_fails_to_connect_three_times(
    tmp_path: Path, config_with_tree: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_with_tree
    assert self_update.launch_target(config) is None  # nothing installed yet
    tree = DirectoryInstaller(tmp_path / "agent")
    tree.install(agent_release(tmp_path, "2.0.0"), "2.0.0")
    tree.commit("2.0.0")
    config.update.state_dir.mkdir(parents=True)

    target = self_update.launch_target(config)
    assert target is not None and target.name == "2.0.0"
    # Started from it, it does not launch itself again.
    monkeypatch.setenv(self_update.LAUNCHED_ENV, str(target))
    assert self_update.launch_target(config) is None
    monkeypatch.delenv(self_update.LAUNCHED_ENV)

    # Two more starts that never connected, then the installed agent runs instead.
    assert self_update.launch_target(config) == target
    assert self_update.launch_target(config) == target
    assert self_update.launch_target(config) is None

    # A start that does connect clears the count for that version only when it was launched.
    self_update.mark_connected(config.update.state_dir)  # the fallback agent connected
    assert self_update.launch_target(config) is None
    monkeypatch.setenv(self_update.LAUNCHED_ENV, str(target))
    self_update.mark_connected(config.update.state_dir)
    monkeypatch.delenv(self_update.LAUNCHED_ENV)
    assert self_update.launch_target(config) == target


def test_rolling_back_the_first_agent_release_empties_the_tree(tmp_path: Path) -> None:
    tree = DirectoryInstaller(tmp_path / "agent")
    tree.install(agent_release(tmp_path, "2.0.0"), "2.0.0")
    assert self_update.agent_tree(tmp_path / "agent") is not None
    tree.rollback("2.0.0")
    assert tree.current_version() is None
    assert self_update.agent_tree(tmp_path / "agent") is None
    assert not (tmp_path / "agent" / "versions" / "2.0.0").exists()


def test_rolling_back_a_later_release_returns_to_the_previous_one(tmp_path: Path) -> None:
    tree = DirectoryInstaller(tmp_path / "agent")
    tree.install(agent_release(tmp_path, "2.0.0"), "2.0.0")
    tree.commit("2.0.0")
    tree.install(agent_release(tmp_path, "3.0.0"), "3.0.0")
    tree.rollback("3.0.0")
    assert tree.current_version() == "2.0.0"


def test_agent_root_must_not_be_the_application_tree(tmp_path: Path) -> None:
    environ = {
        "KERNEX_AGENT_UPDATE__AGENT_ROOT": str(tmp_path / "app"),
        "KERNEX_AGENT_UPDATE__INSTALL_ROOT": str(tmp_path / "app"),
    }
    with pytest.raises(ConfigError, match="agent_root"):
        load_config(write(tmp_path), environ=environ)
