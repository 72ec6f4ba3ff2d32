"""An idle agent loads only what it needs: the modules of downloads, installs and signature checks
wait for the first update, and the standard-library modules paho imports but never uses wait
for ever (bench/agent_footprint.py measures what this saves).

Each check runs in a fresh interpreter (this test process has long since imported everything)
that sees the packages as a device's venv holds them: without `site`, whose processing of this
development venv's editable-install finders loads pathlib, urllib.parse and ipaddress into every
interpreter here before the agent's first line runs.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import kernex_agent
import kernex_protocol

# Our two packages' folders and the third-party packages', and nothing else.
DEVICE_PATH = [
    str(Path(kernex_agent.__file__).parents[1]),
    str(Path(kernex_protocol.__file__).parents[1]),
    sysconfig.get_path("purelib"),
]

# What `kernex-agent` imports and runs before it connects and idles: its modules, and the
# command line parsed (argparse's own help formatter would import shutil).
AGENT_ENTRY = (
    "import kernex_agent.cli, kernex_agent.agent, kernex_agent.transport\n"
    "kernex_agent.cli.main(['--check-config', '--config', '/nonexistent/agent.toml'])"
)

# Loaded by the first download (http.client, with email behind it), the first install (tarfile),
# the first signature check (cryptography), the first removal of an old version (shutil, with
# bz2 and lzma behind it); urllib.request by nothing the agent does; random and secrets by
# nothing (the agent's jitter and request ids come from os.urandom); argparse (and gettext) by a
# command line other than the usual ones; ipaddress, tokenize and uuid by nothing an idle agent
# does (their importers use them for bracketed URL hosts, tracebacks and client ids); hashlib,
# hmac and base64 by the first verification of a bundle or signature.
NOT_LOADED_WHEN_IDLE = (
    "argparse",
    "gettext",
    "ipaddress",
    "tokenize",
    "uuid",
    "hashlib",
    "_hashlib",
    "hmac",
    "base64",
    "http.client",
    "email.parser",
    "tarfile",
    "cryptography",
    "shutil",
    "lzma",
    "urllib.request",
    "random",
    "secrets",
)


def loaded_modules(code: str) -> dict[str, str]:
    """Run `code` in a fresh interpreter; every module it left loaded, by its type's name."""
    script = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps({n: type(m).__name__ for n, m in list(sys.modules.items())}))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(DEVICE_PATH)},
    )
    loaded: dict[str, str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_an_idle_agent_leaves_update_and_proxy_modules_unloaded() -> None:
    loaded = loaded_modules(AGENT_ENTRY)
    assert "paho.mqtt.client" in loaded  # the entry really is the agent's
    executed = [n for n in NOT_LOADED_WHEN_IDLE if loaded.get(n, "_StandIn") != "_StandIn"]
    assert executed == [], f"an idle agent loads {executed}"


def test_a_deferred_module_loads_whole_on_first_use() -> None:
    loaded = loaded_modules(
        "import kernex_agent, sys\n"
        "import urllib.request\n"
        "from urllib.request import Request\n"
        "assert isinstance(urllib.request.getproxies(), dict)\n"
        "assert sys.modules['urllib.request'] is urllib.request\n"
        "assert Request is urllib.request.Request"
    )
    assert loaded["urllib.request"] == "module"
    assert loaded["http.client"] == "module"


def test_paho_finds_no_proxy_without_loading_the_deferred_module() -> None:
    # paho reads proxy settings from urllib.request only when PySocks is installed; with it
    # absent the lookup must answer "no proxy" without loading the module.
    loaded = loaded_modules(
        "import kernex_agent\n"
        "import paho.mqtt.client as mqtt\n"
        "client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)\n"
        "assert client._get_proxy() is None"
    )
    assert loaded["urllib.request"] == "_StandIn"


def test_the_deferred_modules_load_for_the_uses_their_importers_have() -> None:
    loaded = loaded_modules(
        "import kernex_agent, json, traceback, urllib.parse\n"
        "import paho.mqtt.client as mqtt\n"
        "assert urllib.parse.urlsplit('https://[::1]:8443/b').port == 8443\n"
        "try:\n"
        "    urllib.parse.urlsplit('https://[not-an-address]/b')\n"
        "    raise SystemExit('a bracketed host that is no address was accepted')\n"
        "except ValueError:\n"
        "    pass\n"
        "try:\n"
        "    json.loads('{')\n"
        "except ValueError as exc:\n"
        "    text = ''.join(traceback.format_exception(exc))\n"
        "source = [line for line in text.splitlines() if line.startswith('    ')]\n"
        "assert source, text  # the traceback shows its source lines: tokenize read the files\n"
        # paho invents a client id (with uuid) for MQTT 3.1 when it is given none
        "client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv31)\n"
        "assert len(client._client_id) == 22, client._client_id\n"
        "import hashlib, hmac, ssl\n"
        "digest = hashlib.sha256(b'abc').hexdigest()\n"
        "assert digest.startswith('ba7816bf'), digest\n"
        "assert hmac.compare_digest(digest, hashlib.sha256(b'abc').hexdigest())\n"
        "assert ssl.DER_cert_to_PEM_cert(b'x').startswith('-----BEGIN CERTIFICATE-----')"
    )
    for name in ("ipaddress", "tokenize", "uuid", "hashlib", "hmac", "base64"):
        assert loaded[name] == "module", name
