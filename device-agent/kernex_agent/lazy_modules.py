"""Standard-library modules a dependency imports but an idle agent never uses, loaded on first use.

The agent targets small devices, so an idle agent holds only what it needs. paho-mqtt's client
module imports `urllib.request` when it loads (with `http.client` and the `email` package behind
it: about 3 MiB of an idle agent's memory) only to read proxy settings, which it consults only
when PySocks is installed; the agent does not install it. More are imported at start-up for a
use an idle agent never has (0.8 MiB together): `ipaddress` by urllib.parse (which pathlib
imports) to check a bracketed IPv6 host in a URL, `tokenize` by linecache and inspect to read
source files for a traceback, `uuid` by paho to invent a client id the agent always gives,
`hashlib`, `hmac` and `base64` by paho for WebSockets, by ssl for PEM conversions and by our own
update code for the first bundle's digest and the first signature (hashlib's import alone
builds OpenSSL's digests).

A deferred module is a stand-in that `import` accepts; reading any of its attributes loads the
real module, which then replaces the stand-in everywhere the import system looks.

(Not `importlib.util.LazyLoader`: on Python 3.11 the import statement itself reads the lazy
module's `__spec__`, which loads it.)
"""

import importlib
import sys
import threading
import types

# Modules imported by our dependencies and not used by an idle agent.
DEFERRED = ("urllib.request", "ipaddress", "tokenize", "uuid", "hashlib", "hmac", "base64")

_loading = threading.RLock()


class _StandIn(types.ModuleType):
    """Takes a module's place in sys.modules until one of its attributes is read."""

    def __getattr__(self, attr: str) -> object:
        # Called only for what the stand-in lacks: every attribute of the real module.
        return getattr(_load(self.__name__, self), attr)


def _load(name: str, stand_in: _StandIn) -> types.ModuleType:
    with _loading:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        # Loads the real module and binds it as an attribute of its package, like any import.
        return importlib.import_module(name)


def defer(name: str) -> None:
    """Make `import name` cheap: the module is loaded when one of its attributes is first read."""
    if name in sys.modules:
        return
    stand_in = _StandIn(name)
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
        # What the import system does for a submodule: `import a.b` then reads `a.b`.
        setattr(importlib.import_module(parent), child, stand_in)


def defer_unused() -> None:
    """Defer every module in DEFERRED (before the dependencies that import them)."""
    for name in DEFERRED:
        defer(name)
