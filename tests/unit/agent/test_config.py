"""Agent configuration: the kit's file, environment overrides, and clear errors."""

from pathlib import Path

import pytest

from kernex_agent.backoff import Backoff, random_fraction, uniform
from kernex_agent.config import ConfigError, load_config

KIT_CONFIG = """
device_id = "dev-1"
device_type = "gw"
[mqtt]
host = "mqtt.example"
port = 8883
ca_file = "ca-chain.pem"
cert_file = "device.crt"
key_file = "/etc/kernex/device.key"
[update]
health_command = ["sh", "-c", "exit 0"]
"""


def write(tmp_path: Path, text: str = KIT_CONFIG) -> Path:
    path = tmp_path / "kit" / "agent.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), environ={})
    assert config.mqtt.ca_file == (tmp_path / "kit" / "ca-chain.pem").resolve()
    assert config.mqtt.key_file == Path("/etc/kernex/device.key")
    assert config.update.health_command == ("sh", "-c", "exit 0")
    assert config.telemetry.heartbeat_interval_s == 30.0  # the default


def test_environment_overrides_file_values(tmp_path: Path) -> None:
    environ = {
        "KERNEX_AGENT_MQTT__HOST": "other.example",
        "KERNEX_AGENT_MQTT__PORT": "18883",
        "KERNEX_AGENT_DEVICE_TYPE": "gw-2",
        "KERNEX_AGENT_TELEMETRY__START_JITTER": "false",
        "KERNEX_AGENT_UPDATE__HEALTH_COMMAND": "/usr/bin/app --check",
        "KERNEX_AGENT_UPDATE__STATE_DIR": "/var/lib/x",
        "UNRELATED": "ignored",
    }
    config = load_config(write(tmp_path), environ=environ)
    assert (config.mqtt.host, config.mqtt.port, config.device_type) == (
        "other.example",
        18883,
        "gw-2",
    )
    assert config.telemetry.start_jitter is False
    assert config.update.health_command == ("/usr/bin/app", "--check")
    assert config.update.state_dir == Path("/var/lib/x")
    assert config.mqtt.cert_file == (tmp_path / "kit" / "device.crt").resolve()


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        (KIT_CONFIG.replace('"dev-1"', '"dev/1"'), {}, "device_id"),
        (KIT_CONFIG.replace('device_type = "gw"', ""), {}, "missing option"),
        (KIT_CONFIG + "\n[nonsense]\nx = 1\n", {}, "unknown option"),
        (KIT_CONFIG.replace("port = 8883", 'port = "8883"'), {}, "mqtt.port"),
        (KIT_CONFIG.replace("port = 8883", "port = true"), {}, "mqtt.port"),
        (KIT_CONFIG, {"KERNEX_AGENT_MQTT__PORT": "eighty"}, "mqtt.port"),
        (KIT_CONFIG, {"KERNEX_AGENT_BOGUS__X": "1"}, "unknown section"),
        (KIT_CONFIG, {"KERNEX_AGENT_TELEMETRY__START_JITTER": "maybe"}, "start_jitter"),
        (KIT_CONFIG, {"KERNEX_AGENT_TELEMETRY__HEARTBEAT_INTERVAL_S": "0"}, "heartbeat"),
        ("device_id = ", {}, "agent.toml"),
    ],
)
def test_bad_configuration_is_refused_with_the_option_named(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ=environ)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no configuration file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_backoff_grows_with_jitter_within_bounds_and_resets() -> None:
    backoff = Backoff(1.0, 60.0)
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        delay = backoff.next_delay()
        assert 1.0 <= delay <= ceilings[-1]
    assert ceilings[:4] == [1.0, 2.0, 4.0, 8.0] and ceilings[-1] == 60.0
    delays = {_delay_after(6) for _ in range(20)}
    assert len(delays) > 5  # randomised, not lockstep
    backoff.reset()
    assert backoff.ceiling() == 1.0


def test_backoff_spans_from_minimum_to_ceiling() -> None:
    lowest = Backoff(1.0, 60.0, fraction=lambda: 0.0)
    highest = Backoff(1.0, 60.0, fraction=lambda: 0.999)
    for _ in range(3):
        assert lowest.next_delay() == 1.0
    assert [round(highest.next_delay(), 3) for _ in range(3)] == [1.0, 1.999, 3.997]


def test_jitter_draws_are_uniform_over_the_interval() -> None:
    draws = [random_fraction() for _ in range(20_000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    # Each tenth of [0, 1) gets its share: 2,000 expected, 5 standard deviations either side.
    tenths = [0] * 10
    for d in draws:
        tenths[int(d * 10)] += 1
    assert all(1_790 < n < 2_210 for n in tenths), tenths
    assert all(5.0 <= uniform(5.0, 7.0) < 7.0 for _ in range(1_000))


def _delay_after(failures: int) -> float:
    backoff = Backoff(1.0, 60.0)
    backoff.failures = failures
    return backoff.next_delay()
