"""API key tokens: `kx_<id>_<secret>`.

The id is public and finds the row; only a SHA-256 digest of the secret is stored. The secret has
256 bits of entropy, so a fast digest is enough: there is nothing to brute-force, unlike a
password. Comparison is constant-time.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "kx"  # noqa: S105 - a public marker, not a secret
_ID_HEX_CHARS = 16
# Compared against when the id is unknown, so that case costs the same as a wrong secret.
_DUMMY_DIGEST = hashlib.sha256(b"kernex-unknown-key").hexdigest()


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly generated key: its id, the digest to store, and the token shown once."""

    key_id: str
    secret_sha256: str
    token: str


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate() -> NewToken:
    """Create a new random token."""
    key_id = secrets.token_hex(_ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(32)
    return NewToken(key_id, digest(secret), f"{TOKEN_PREFIX}_{key_id}_{secret}")


def parse(token: str) -> tuple[str, str] | None:
    """Split a token into (key id, secret), or None if it is not shaped like one."""
    prefix, sep, rest = token.partition("_")
    key_id, sep2, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or not secret:
        return None
    if len(key_id) != _ID_HEX_CHARS or any(c not in "0123456789abcdef" for c in key_id):
        return None
    if len(secret) > 128:
        return None
    return key_id, secret


def matches(secret: str, stored_digest: str | None) -> bool:
    """Constant-time check of `secret` against a stored digest (None: unknown key)."""
    expected = stored_digest if stored_digest is not None else _DUMMY_DIGEST
    return hmac.compare_digest(digest(secret), expected) and stored_digest is not None
