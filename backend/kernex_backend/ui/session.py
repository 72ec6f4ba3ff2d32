"""Signing in to the dashboard: the API key lives in a cookie the browser's scripts cannot read
(HttpOnly), sent only to this site's own pages (SameSite=Strict, Path=/ui, Secure over HTTPS).
Every form carries a CSRF token derived from the key, which another site cannot compute; the
sign-in form carries a random one, doubled in a cookie."""

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request

from kernex_backend.core.access import Principal, VerifierDep
from kernex_backend.core.runtime import SessionDep
from kernex_backend.core.scopes import Scope

SESSION_COOKIE = "kernex_ui"
LOGIN_COOKIE = "kernex_ui_login"
UI_PATH = "/ui"


class SignInRequired(Exception):
    """No valid key in the cookie: the page redirects to the sign-in form."""


def csrf_token(api_key: str) -> str:
    """The CSRF token of a signed-in session (stable for the key, useless without it)."""
    return hmac.new(api_key.encode(), b"kernex-ui-csrf", hashlib.sha256).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def new_login_token() -> str:
    """A random token for the sign-in form and its cookie."""
    return secrets.token_urlsafe(24)


class UiSession:
    """The signed-in principal and the CSRF token its forms carry."""

    def __init__(self, principal: Principal, api_key: str) -> None:
        self.principal = principal
        self.csrf = csrf_token(api_key)

    @property
    def can_write(self) -> bool:
        """Whether the key may change things (write scope); pages hide what it may not do."""
        return Scope.WRITE in self.principal.scopes


async def _ui_session(request: Request, verifier: VerifierDep, session: SessionDep) -> UiSession:
    api_key = request.cookies.get(SESSION_COOKIE)
    if not api_key:
        raise SignInRequired
    principal = await verifier.verify(session, api_key)
    if principal is None:
        raise SignInRequired
    return UiSession(principal, api_key)


UiSessionDep = Annotated[UiSession, Depends(_ui_session)]
