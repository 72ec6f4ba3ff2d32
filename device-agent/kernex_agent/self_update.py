"""The agent updating itself through an ordinary Kernex deployment.

A release of `update.agent_product` (default "kernex-agent") holds the agent's own Python
packages (kernex_agent, kernex_protocol) and is installed like any release, but under
`update.agent_root` (versions/, current, previous) instead of the application's tree:

1. install: unpack and switch `agent_root/current` to the new version, as for any release;
2. health check: the running agent steps off the broker for a moment (the broker allows one
   connection per device) and runs the NEW code as `python -m kernex_agent --connect-probe`,
   which must connect with the device's certificate and be granted its notice topic; then the
   running agent reconnects. A new version that cannot import, read the configuration, load
   the certificate or connect fails the check, and the update is rolled back as any other;
3. commit, report, then exit with RESTART_EXIT_CODE: the service manager starts the agent
   again, and the launcher (below) runs the committed version.

The launcher is the first thing `kernex-agent` does: if `agent_root/current` holds an agent,
re-execute into it. The version installed with the device (the one that runs the launcher) is
the fallback: a committed version that dies BOOT_ATTEMPTS times before it connects is skipped,
so the device keeps an agent that reaches the backend, which can then deploy a fix.
"""

import json
import logging
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kernex_agent.config import AgentConfig
from kernex_agent.files import write_atomic
from kernex_protocol.topics import CHANNELS, Channel, topic_for

# Exit status after committing a new agent: "start me again". Not 0, so that service managers
# restarting only on failure (systemd's Restart=on-failure) restart it too.
RESTART_EXIT_CODE: Final = 75
# Set in the environment of an agent the launcher started from agent_root, so it does not
# re-execute itself again (outside the KERNEX_AGENT_ namespace of configuration options).
LAUNCHED_ENV: Final = "KERNEX_LAUNCHED_AGENT"
BOOT_ATTEMPTS: Final = 3
BOOTS_FILE: Final = "agent-boots.json"

log = logging.getLogger("kernex_agent.self_update")


def agent_tree(agent_root: Path) -> Path | None:
    """The committed agent's code directory, if `agent_root/current` holds one."""
    current = agent_root / "current"
    if (current / "kernex_agent" / "__init__.py").is_file():
        return current.resolve()
    return None


def _boots(state_dir: Path) -> dict[str, int]:
    try:
        data = json.loads((state_dir / BOOTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_boots(state_dir: Path, boots: dict[str, int]) -> bool:
    """Whether the count was saved (not on a full or read-only disk)."""
    try:
        write_atomic(state_dir / BOOTS_FILE, json.dumps(boots).encode())
    except OSError as exc:
        log.warning("agent.boots_unsaved", extra={"error": str(exc)})
        return False
    return True


def mark_connected(state_dir: Path) -> None:
    """The agent the launcher started reached the broker: its version is good to start again.
    (The fallback agent connecting says nothing about the version it stands in for.) Unsaved on
    a full disk, the count is cleared at the next connection with room."""
    launched = os.environ.get(LAUNCHED_ENV)
    boots = _boots(state_dir)
    if launched and boots.pop(Path(launched).name, None) is not None:
        _save_boots(state_dir, boots)


def launch_target(config: AgentConfig) -> Path | None:
    """Where to re-execute the agent from, or None to run the code already loaded: no self-update
    configured, nothing committed, already launched from it, or that version kept dying before
    it connected (BOOT_ATTEMPTS starts)."""
    root = config.update.agent_root
    if root is None:
        return None
    tree = agent_tree(root)
    if tree is None or os.environ.get(LAUNCHED_ENV) == str(tree):
        return None
    boots = _boots(config.update.state_dir)
    if boots.get(tree.name, 0) >= BOOT_ATTEMPTS:
        sys.stderr.write(
            f"kernex-agent: agent {tree.name} failed {BOOT_ATTEMPTS} starts before connecting; "
            "running the installed agent instead\n"
        )
        return None
    boots[tree.name] = boots.get(tree.name, 0) + 1
    if not _save_boots(config.update.state_dir, boots):
        # Uncounted, a version that dies before connecting would be started for ever: the
        # installed agent runs until there is room to count again.
        sys.stderr.write(
            "kernex-agent: cannot count this start (the state directory is not writable); "
            "running the installed agent instead\n"
        )
        return None
    return tree


def execute_from(tree: Path, argv: list[str]) -> None:
    """Replace this process with the agent from `tree` (never returns)."""
    env = dict(os.environ)
    env[LAUNCHED_ENV] = str(tree)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    os.execve(sys.executable, [sys.executable, "-m", "kernex_agent", *argv], env)  # noqa: S606


class PausableTransport(Protocol):
    """What AgentProbe needs of the MQTT transport (transport.MqttTransport)."""

    def pause(self, *, timeout: float = 10.0) -> bool:
        """Disconnect and stay away; True once disconnected."""

    def resume(self) -> None:
        """Reconnect."""


class AgentProbe:
    """The health check of a new agent: run it in probe mode while this agent is off the broker."""

    def __init__(
        self,
        *,
        agent_root: Path,
        config_file: Path | None,
        transport: PausableTransport,
        timeout_s: float,
    ) -> None:
        self.agent_root = agent_root
        self.config_file = config_file
        self.transport = transport
        self.timeout_s = timeout_s

    def __call__(self) -> bool:
        tree = agent_tree(self.agent_root)
        if tree is None or self.config_file is None:
            return False
        env = dict(os.environ)
        env["PYTHONPATH"] = str(tree)
        env[LAUNCHED_ENV] = str(tree)
        command = [sys.executable, "-m", "kernex_agent", "--config", str(self.config_file)]
        self.transport.pause()
        try:
            result = subprocess.run(  # noqa: S603 - our own interpreter and the new agent
                [*command, "--connect-probe"],
                env=env,
                timeout=self.timeout_s,
                capture_output=True,
                check=False,
            )
        except (subprocess.TimeoutExpired, OSError) as exc:
            log.warning("self_update.probe_failed", extra={"reason": type(exc).__name__})
            return False
        finally:
            self.transport.resume()
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.returncode != 0:
            log.warning(
                "self_update.probe_failed",
                extra={"status": result.returncode, "output": output[-500:]},
            )
            return False
        log.info("self_update.probe_passed", extra={"output": output[-200:]})
        return True


def connect_probe(config: AgentConfig, *, timeout_s: float = 20.0) -> tuple[bool, str]:
    """Connect as the device, subscribe to its notice topic, disconnect: (ok, what happened)."""
    mqtt_config = config.mqtt
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(mqtt_config.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(mqtt_config.cert_file), str(mqtt_config.key_file))
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.device_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.tls_set_context(context)
    client.connect_timeout = mqtt_config.connect_timeout_s
    done = threading.Event()
    outcome: dict[str, str | bool] = {"ok": False, "detail": "no answer from the broker"}
    topic = topic_for(config.device_id, Channel.DEPLOYMENT)

    def on_connect(c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            outcome["detail"] = f"the broker refused the connection: {reason}"
            done.set()
            return
        c.subscribe(topic, qos=CHANNELS[Channel.DEPLOYMENT].qos)

    def on_subscribe(
        _c: mqtt.Client, _u: object, _m: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        refused = any(r.is_failure for r in reasons)
        outcome["ok"] = not refused
        outcome["detail"] = "subscription refused" if refused else "connected and subscribed"
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    try:
        client.connect(mqtt_config.host, mqtt_config.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return bool(outcome["ok"]), str(outcome["detail"])
