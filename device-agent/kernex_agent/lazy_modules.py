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
from collections.abc import Callable, Iterable

# Modules imported by our dependencies and not used by an idle agent.
DEFERRED = ("urllib.request", "ipaddress", "tokenize", "uuid", "hashlib", "hmac", "base64")

_loading = threading.RLock()
# Per deferred module: attributes the real module does not define either, so reading them on the
# stand-in raises AttributeError instead of loading it (see defer's `absent`).
_absent: dict[str, frozenset[str]] = {}


class _StandIn(types.ModuleType):
    """Takes a module's place in sys.modules until one of its attributes is read."""

    def __getattr__(self, attr: str) -> object:
        # Called only for what the stand-in lacks: every attribute of the real module.
        if attr in _absent.get(self.__name__, ()):
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        return getattr(load(self.__name__), attr)


def load(name: str) -> types.ModuleType:
    """The real module `name`, loaded now if a stand-in holds its place."""
    with _loading:
        if isinstance(sys.modules.get(name), _StandIn):
            del sys.modules[name]
        # Loads the real module and binds it as an attribute of its package, like any import.
        return importlib.import_module(name)


def defer(
    name: str,
    *,
    absent: Iterable[str] = (),
    provides: dict[str, Callable[..., object]] | None = None,
) -> None:
    """Make `import name` cheap: the module is loaded when one of its attributes is first read.

    `absent` names attributes the real module lacks but an importer probes for (the codec
    search asks for `__all__`, `__path__` and `getaliases`): the stand-in answers them as the
    real module would, without loading it. `provides` gives the stand-in attributes of its own,
    read without loading the real module.
    """
    if name in sys.modules:
        return
    stand_in = _StandIn(name)
    for attr, value in (provides or {}).items():
        setattr(stand_in, attr, value)
    _absent[name] = frozenset(absent)
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
        # What the import system does for a submodule: `import a.b` then reads `a.b`.
        setattr(importlib.import_module(parent), child, stand_in)


def defer_unused() -> None:
    """Defer every module in DEFERRED (before the dependencies that import them)."""
    for name in DEFERRED:
        defer(name)
