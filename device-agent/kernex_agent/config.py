"""The agent's configuration: a TOML file (the device kit's agent.toml works as is) plus
`KERNEX_AGENT_` environment overrides.

An override names a key by its section and name joined with `__`:
`KERNEX_AGENT_MQTT__HOST=broker.example.com`, `KERNEX_AGENT_DEVICE_TYPE=gateway-v2`.
Relative paths in the file are relative to the file; in the environment, to the working
directory. Every option is listed in device-agent/README.md.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Final, get_type_hints

from kernex_protocol.ids import InvalidDeviceId, validate_device_id

ENV_PREFIX: Final = "KERNEX_AGENT_"


class ConfigError(ValueError):
    """The configuration is missing something or holds a bad value; the message says which."""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where the broker is and who the device is to it."""

    host: str = "localhost"
    port: int = 8883
    ca_file: Path = Path("ca-chain.pem")
    cert_file: Path = Path("device.crt")
    key_file: Path = Path("device.key")
    keepalive_s: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    connect_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class ReleaseConfig:
    """Which release keys the device trusts."""

    trusted_keys_dir: Path = Path("release-keys")
    # The backend's notice keys (*.pub): every notice must carry a signature by one of them.
    notice_keys_dir: Path = Path("notice-keys")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Heartbeats."""

    heartbeat_interval_s: float = 30.0
    # The first heartbeat waits a random share of one interval, so a fleet that reboots at
    # once (a power cut across a site) does not beat in lockstep.
    start_jitter: bool = True


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    """Where updates are kept and how they are applied."""

    state_dir: Path = Path("/var/lib/kernex-agent")
    install_root: Path = Path("/opt/kernex/app")
    keep_versions: int = 2
    health_command: tuple[str, ...] = ()  # empty: a successful install is healthy
    health_timeout_s: float = 60.0
    max_bundle_bytes: int = 2 * 1024**3
    max_unpacked_bytes: int = 8 * 1024**3
    # Free space kept beyond what the download needs, so an update never fills the disk.
    reserve_bytes: int = 64 * 1024**2
    download_attempts: int = 8
    download_timeout_s: float = 30.0
    url_wait_s: float = 30.0  # how long to wait for the answer to a url/request
    download_rate_limit_bps: int = 0  # 0: unlimited; set it on metered or shared links
    # A transfer that still moves but too little is cut and resumed later (see download.py).
    download_stall_s: float = 60.0
    download_min_rate_bps: int = 1024
    download_rate_window_s: float = 120.0
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    max_state_saves: int = 50
    # Release names (manifest `name`) this device runs; a release of anything else is refused.
    products: tuple[str, ...] = ()
    # A release made longer ago than this needs a signed rollback approval (0: no limit).
    max_release_age_days: float = 365.0
    # A notice whose expiry lies further ahead than this is refused (the backend's are short).
    max_notice_ttl_s: float = 7 * 86400.0
    # Self-update (kernex_agent/self_update.py): releases named `agent_product` install the
    # agent's own code under `agent_root`; unset, the agent never replaces itself.
    agent_root: Path | None = None
    agent_product: str = "kernex-agent"
    # How long the new agent may take to prove it connects (its health check).
    agent_probe_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging."""

    level: str = "INFO"
    format: str = "json"  # or "text"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs."""

    device_id: str
    device_type: str
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    log: LogConfig = field(default_factory=LogConfig)


_SECTIONS: Final = {
    "mqtt": MqttConfig,
    "release": ReleaseConfig,
    "telemetry": TelemetryConfig,
    "update": UpdateConfig,
    "log": LogConfig,
}


class _EnvText(str):
    """A value from the environment: text that may stand for a number, a flag or a command,
    unlike a TOML string, which must already have the option's type."""

    __slots__ = ()


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvText) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError


def _to_number(value: Any, kind: type[int] | type[float]) -> int | float:
    # Environment values arrive as text; TOML values must already be numbers (never booleans).
    if isinstance(value, bool) or not isinstance(value, _EnvText | int | float):
        raise ValueError
    if kind is int and isinstance(value, float):
        raise ValueError
    return kind(value)


def _to_command(value: Any) -> tuple[str, ...]:
    if isinstance(value, _EnvText):
        value = value.split()  # a command line, split on white space
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError
    return tuple(value)


def _convert(value: Any, kind: Any, name: str, base: Path) -> Any:
    """Coerce a TOML or environment value to the field's type, resolving relative paths."""
    try:
        if kind == Path | None:
            kind = Path
        if kind is Path:
            path = Path(os.path.expanduser(str(value)))
            return path if path.is_absolute() else (base / path)
        if kind is bool:
            return _to_bool(value)
        if kind in (int, float):
            return _to_number(value, kind)
        if kind == tuple[str, ...]:
            return _to_command(value)
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"{name}: {value!r} is not a valid {getattr(kind, '__name__', kind)}")


def _build(cls: Any, values: Mapping[str, Any], prefix: str, base: Path) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(prefix + u for u in sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"[{name}] must be a section")
            kwargs[name] = _build(kind, value, f"{name}.", base)
        else:
            kwargs[name] = _convert(value, kind, prefix + name, base)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"missing option: {exc}") from None


def _with_environment(document: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in document.items()}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        section, sep, name = key[len(ENV_PREFIX) :].lower().partition("__")
        if sep:
            if section not in _SECTIONS:
                raise ConfigError(f"{key}: unknown section {section!r}")
            merged.setdefault(section, {})[name] = _EnvText(value)
        else:
            merged[section] = _EnvText(value)
    return merged


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read `path`, apply the environment's overrides, and validate."""
    environ = os.environ if environ is None else environ
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    file_values = _build_paths_relative(document, path.parent.resolve())
    env_values = _with_environment({}, environ)
    config: AgentConfig = _build(AgentConfig, _merge(file_values, env_values), "", Path.cwd())
    try:
        validate_device_id(config.device_id)
    except InvalidDeviceId as exc:
        raise ConfigError(f"device_id: {exc}") from None
    if not config.device_type or len(config.device_type) > 64:
        raise ConfigError("device_type must be 1-64 characters")
    if config.telemetry.heartbeat_interval_s <= 0:
        raise ConfigError("telemetry.heartbeat_interval_s must be positive")
    if not 0 < config.mqtt.reconnect_min_s <= config.mqtt.reconnect_max_s:
        raise ConfigError("mqtt.reconnect_min_s must be positive and at most reconnect_max_s")
    if config.update.keep_versions < 1:
        raise ConfigError("update.keep_versions must be at least 1")
    agent_root = config.update.agent_root
    if agent_root is not None and agent_root.resolve() == config.update.install_root.resolve():
        raise ConfigError("update.agent_root must differ from update.install_root")
    return config


def _build_paths_relative(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve the file's relative paths against the file's directory, now, so that
    environment values (resolved later against the working directory) can override them."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        section = _SECTIONS.get(key)
        if section is not None and isinstance(value, dict):
            hints = get_type_hints(section)
            out[key] = {
                name: (
                    _convert(item, Path, f"{key}.{name}", base)
                    if hints.get(name) in (Path, Path | None)
                    else item
                )
                for name, item in value.items()
            }
        else:
            out[key] = value
    return out


def _merge(file_values: dict[str, Any], env_values: dict[str, Any]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in file_values.items()}
    for key, value in env_values.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged
