"""The notice inbox: the latest deployment notice heard, parsed once on arrival.

The deployment topic is retained, so what matters is only the newest payload: it decides which
deployment is current (an update in progress for another one, or with none, is withdrawn) and
what to consider next. `changed` is set whenever a payload arrives.
"""

import asyncio

from kernex_protocol.payloads import Notice, PayloadInvalid


class NoticeInbox:
    """Holds the newest notice payload and what it parsed to."""

    def __init__(self) -> None:
        self.raw: bytes | None = None  # None: nothing heard since start; b"": cleared
        self.parsed: Notice | PayloadInvalid | None = None  # None for an empty payload
        self.changed = asyncio.Event()

    def receive(self, payload: bytes) -> None:
        """A payload arrived on the deployment topic."""
        self.raw = payload
        if not payload:
            self.parsed = None
        else:
            try:
                self.parsed = Notice.parse(payload)
            except PayloadInvalid as exc:
                self.parsed = exc
        self.changed.set()

    @property
    def current_id(self) -> str | None:
        """The deployment the newest valid notice is for, or None."""
        return self.parsed.deployment_id if isinstance(self.parsed, Notice) else None

    def withdrawn(self, deployment_id: str) -> bool:
        """True once a notice other than this deployment's (or none) was heard since start."""
        return self.raw is not None and self.current_id != deployment_id
