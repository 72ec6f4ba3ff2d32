"""The supply-chain claims of docs/security.md hold: the Mosquitto every path ships is at least
the documented minimum (the one with the listed security fixes), the broker image refuses an
older one, and pip-audit is set up to fail rather than skip what it cannot look up."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "broker.Dockerfile"
SECURITY = REPO / "docs" / "security.md"
AUDIT = REPO / "deploy" / "tools" / "audit.sh"


def minimum_mosquitto() -> str:
    match = re.search(r"^ARG MOSQUITTO_MIN_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, "broker.Dockerfile declares no MOSQUITTO_MIN_VERSION"
    return match.group(1)


def at_least(version: str, minimum: str) -> bool:
    return (
        subprocess.run(
            ["dpkg", "--compare-versions", version, "ge", minimum], check=False
        ).returncode
        == 0
    )


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (Debian)")
def test_the_mosquitto_we_run_has_the_documented_fixes() -> None:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "mosquitto"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert at_least(installed, minimum_mosquitto()), installed
    # The comparison is Debian's, not a string's: it can say no.
    assert not at_least("2.0.11-1.2+deb12u1", minimum_mosquitto())


def test_the_broker_image_refuses_an_older_mosquitto_and_the_docs_name_it() -> None:
    text = DOCKERFILE.read_text()
    assert 'dpkg --compare-versions "$installed" ge "$MOSQUITTO_MIN_VERSION"' in text
    assert "exit 1" in text
    assert minimum_mosquitto() in SECURITY.read_text()


def test_the_audit_fails_on_what_it_cannot_look_up() -> None:
    script = AUDIT.read_text()
    assert "--strict" in script and "constraints.txt" in script
    pinned = (REPO / "deploy" / "tools" / "audit-constraints.txt").read_text()
    version = re.search(r"^version=(\S+)$", script, re.M)
    assert version and f"pip_audit=={version.group(1)}" in pinned
