"""API key token format, hashing and scopes."""

import pytest

from kernex_backend.api_keys import tokens
from kernex_backend.core.scopes import Scope, effective


def test_generated_tokens_parse_and_match() -> None:
    new = tokens.generate()
    parsed = tokens.parse(new.token)
    assert parsed is not None
    key_id, secret = parsed
    assert key_id == new.key_id
    assert tokens.matches(secret, new.secret_sha256)
    assert not tokens.matches(secret + "x", new.secret_sha256)
    assert not tokens.matches(secret, None)
    assert secret not in new.secret_sha256


def test_tokens_are_unique() -> None:
    assert len({tokens.generate().token for _ in range(200)}) == 200


@pytest.mark.parametrize(
    "token",
    [
        "",
        "kx",
        "kx_",
        "kx_0123456789abcdef",
        "kx_0123456789abcdef_",
        "ky_0123456789abcdef_secret",
        "kx_0123456789ABCDEF_secret",
        "kx_short_secret",
        "kx_0123456789abcdef_" + "s" * 129,
    ],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert tokens.parse(token) is None


def test_secret_may_contain_underscores() -> None:
    assert tokens.parse("kx_0123456789abcdef_a_b_c") == ("0123456789abcdef", "a_b_c")


def test_scope_implication() -> None:
    assert effective(["admin"]) == {Scope.READ, Scope.WRITE, Scope.ADMIN}
    assert effective(["write"]) == {Scope.READ, Scope.WRITE}
    assert effective(["read"]) == {Scope.READ}
    assert effective(["root", "superuser"]) == frozenset()
    assert effective([]) == frozenset()
