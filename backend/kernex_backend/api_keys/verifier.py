"""The api_keys domain's side of authentication: the KeyVerifier that core/access.py uses."""

from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.api_keys import service
from kernex_backend.api_keys.last_used import LastUsedTracker
from kernex_backend.core.access import Principal
from kernex_backend.core.db import utc_now
from kernex_backend.core.scopes import effective


class ApiKeyVerifier:
    """Checks a token against the stored keys and notes when each key was last used."""

    def __init__(self, last_used: LastUsedTracker) -> None:
        self._last_used = last_used

    async def verify(self, session: AsyncSession, token: str) -> Principal | None:
        """The principal of a live key, or None for a malformed, unknown or revoked token."""
        key = await service.authenticate(session=session, token=token)
        if key is None:
            return None
        self._last_used.touch(key.id, utc_now())
        return Principal(key_id=key.id, name=key.name, scopes=effective(key.scopes))
