"""Where the CLI finds its server and key: named profiles in the user's config directory
(`$XDG_CONFIG_HOME/kernex/config.json`, else `~/.config/kernex/config.json`, mode 0600), with
`KERNEX_URL`, `KERNEX_API_KEY` and `KERNEX_PROFILE` taking precedence."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROFILE = "default"


class NotSignedIn(Exception):
    """No URL or key for the chosen profile."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One server and the API key used with it."""

    name: str
    url: str
    api_key: str


def config_file() -> Path:
    """The profiles file."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kernex" / "config.json"


def _load() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(config_file().read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise NotSignedIn(
            f"{config_file()} is not valid JSON ({exc}); run `kernex login`"
        ) from None
    profiles = data.get("profiles", {}) if isinstance(data, dict) else {}
    return {k: v for k, v in profiles.items() if isinstance(v, dict)}


def save(profile: Profile) -> Path:
    """Store `profile` (replacing one of the same name); the file is readable by its owner only."""
    profiles = _load()
    profiles[profile.name] = {"url": profile.url, "api_key": profile.api_key}
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"profiles": profiles}, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def names() -> list[str]:
    """The stored profiles."""
    return sorted(_load())


def resolve(name: str | None) -> Profile:
    """The profile to use: the environment's URL and key over the stored profile's."""
    chosen = name or os.environ.get("KERNEX_PROFILE") or DEFAULT_PROFILE
    stored = _load().get(chosen, {})
    url = os.environ.get("KERNEX_URL") or stored.get("url")
    key = os.environ.get("KERNEX_API_KEY") or stored.get("api_key")
    if not url or not key:
        raise NotSignedIn(
            f"no server or API key for profile {chosen!r}: run `kernex login` "
            "or set KERNEX_URL and KERNEX_API_KEY"
        )
    return Profile(chosen, url.rstrip("/"), key)
