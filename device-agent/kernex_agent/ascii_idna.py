"""The "idna" codec for ASCII host names, without the 0.4 MiB the standard one loads.

Every connection encodes the broker's host name with the "idna" codec twice: socket.getaddrinfo
does it for any str host, and ssl does it for server_hostname. The standard codec module,
encodings.idna, imports unicodedata and stringprep (Unicode tables an idle agent would hold for
ever) for the non-ASCII names it supports, and has a fast path for ASCII names that needs
neither. This module stands in for encodings.idna: ASCII names take that same fast path here,
and anything else (non-ASCII names, decoding, incremental or stream use) loads the standard
module, which then replaces the stand-in in sys.modules (the stand-in is lazy_modules' own, told
which attributes the codec search probes for and the real module lacks).

tests/unit/agent/test_ascii_idna.py checks the fast path against the standard codec's answers.
"""

import codecs
import types
from typing import TYPE_CHECKING, Any

from kernex_agent import lazy_modules

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

_NAME = "encodings.idna"
_MAX_LABEL = 63  # octets, RFC 1035; encodings.idna refuses longer labels with the same check
# The codec search imports the module with fromlist ["*"] (which asks for __path__ and __all__),
# then asks for getaliases: encodings.idna defines none of them, so the stand-in answers them
# without loading it.
_ABSENT = frozenset({"__path__", "__all__", "getaliases"})


def _standard_codec() -> types.ModuleType:
    """The standard encodings.idna, loaded on first need."""
    return lazy_modules.load(_NAME)


def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
    """encodings.idna's encode; ASCII names without loading it."""
    if not (isinstance(text, str) and text.isascii() and errors == "strict"):
        result: tuple[bytes, int] = _standard_codec().Codec().encode(text, errors)
        return result
    if not text:
        return b"", 0
    name = text.encode("ascii")
    labels = name.split(b".")
    # Every label but the last must be 1-63 octets; the last may be empty (a trailing dot).
    if any(not 0 < len(label) <= _MAX_LABEL for label in labels[:-1]):
        raise UnicodeError("label empty or too long")
    if len(labels[-1]) > _MAX_LABEL:
        raise UnicodeError("label too long")
    return name, len(text)


def decode(data: "ReadableBuffer", errors: str = "strict") -> tuple[str, int]:
    result: tuple[str, int] = _standard_codec().Codec().decode(data, errors)
    return result


def _incremental_encoder(*args: Any, **kwargs: Any) -> codecs.IncrementalEncoder:
    encoder: codecs.IncrementalEncoder = _standard_codec().IncrementalEncoder(*args, **kwargs)
    return encoder


def _incremental_decoder(*args: Any, **kwargs: Any) -> codecs.IncrementalDecoder:
    decoder: codecs.IncrementalDecoder = _standard_codec().IncrementalDecoder(*args, **kwargs)
    return decoder


def _stream_writer(*args: Any, **kwargs: Any) -> codecs.StreamWriter:
    writer: codecs.StreamWriter = _standard_codec().StreamWriter(*args, **kwargs)
    return writer


def _stream_reader(*args: Any, **kwargs: Any) -> codecs.StreamReader:
    reader: codecs.StreamReader = _standard_codec().StreamReader(*args, **kwargs)
    return reader


def _regentry() -> codecs.CodecInfo:
    return codecs.CodecInfo(
        name="idna",
        encode=encode,
        decode=decode,
        incrementalencoder=_incremental_encoder,
        incrementaldecoder=_incremental_decoder,
        streamwriter=_stream_writer,
        streamreader=_stream_reader,
    )


def install() -> None:
    """Stand in for encodings.idna, unless the "idna" codec was already looked up.

    If it was, encodings.idna is loaded (and the codec registry caches what it found).
    """
    lazy_modules.defer(_NAME, absent=_ABSENT, provides={"getregentry": _regentry})
