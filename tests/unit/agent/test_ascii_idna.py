"""The agent's "idna" codec answers as the standard one does, and loads it only when needed."""

import importlib

import pytest

from kernex_agent import ascii_idna
from tests.unit.agent.test_idle_imports import loaded_modules

NAMES = [
    "localhost",
    "broker.example.com",
    "broker.example.com.",  # a trailing dot: the root
    "",
    "a" * 63 + ".example",
    "a" * 64 + ".example",  # a label too long
    "x." + "a" * 63,
    "x." + "a" * 64,  # the last label too long
    "a..b",  # an empty label
    ".",
    "..",
    "bücher.example",  # not ASCII: the standard codec's own path
    "BROKER.Example.COM",
]


def _outcome(encode: object, name: str, errors: str) -> object:
    try:
        return encode(name, errors)  # type: ignore[operator]
    except UnicodeError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("errors", ["strict", "ignore"])
def test_encode_answers_as_the_standard_codec(name: str, errors: str) -> None:
    standard = importlib.import_module("encodings.idna").Codec().encode
    assert _outcome(ascii_idna.encode, name, errors) == _outcome(standard, name, errors)


def test_ascii_names_connect_without_the_unicode_tables() -> None:
    # What a connection does: getaddrinfo and ssl's server_hostname both use the codec.
    loaded = loaded_modules(
        "import kernex_agent, socket, ssl\n"
        "socket.getaddrinfo('localhost', 1883)\n"
        "context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
        "tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), "
        "server_hostname='broker.example.com')\n"
        "assert tls.server_hostname == 'broker.example.com'\n"
        "assert 'localhost.'.encode('idna') == b'localhost.'"
    )
    assert loaded["encodings.idna"] == "_StandIn"
    assert "unicodedata" not in loaded
    assert "stringprep" not in loaded


def test_anything_else_loads_the_standard_codec_whole() -> None:
    loaded = loaded_modules(
        "import kernex_agent, codecs, sys\n"
        "assert 'bücher.example'.encode('idna') == b'xn--bcher-kva.example'\n"
        "assert b'xn--bcher-kva.example'.decode('idna') == 'bücher.example'\n"
        "encoder = codecs.getincrementalencoder('idna')()\n"
        "assert encoder.encode('bücher.', final=True) == b'xn--bcher-kva.'\n"
        "import encodings.idna\n"
        "assert sys.modules['encodings.idna'] is encodings.idna\n"
        "assert encodings.idna.ToASCII('bücher') == b'xn--bcher-kva'"
    )
    assert loaded["encodings.idna"] == "module"
    assert loaded["unicodedata"] == "module"


def test_a_stand_in_attribute_read_loads_the_standard_module() -> None:
    loaded = loaded_modules(
        "import kernex_agent\n"
        "from encodings import idna\n"
        "assert idna.ToASCII('example') == b'example'"
    )
    assert loaded["encodings.idna"] == "module"
