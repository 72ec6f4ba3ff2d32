"""Ending a device's broker session: Mosquitto 2.0 has no command that disconnects a client, so
the backend takes the session over.

The broker makes a certificate's CN the client id, and a second connection with a client id
that is already connected closes the first (MQTT's session takeover). So the backend has the CA
issue a one-use certificate for the device's identity (kind TAKEOVER, valid for minutes,
recorded in the CA's index), connects with it with a clean session, and disconnects at once:
the device's connection is closed and its broker session is gone. The ACL denies the identity
everything while it is quarantined, so the takeover connection itself can do nothing, and the
CRL lists the device's own certificates as on hold, so the device cannot come back until it is
released.

The broker applies a reload asynchronously (at its next loop on SIGHUP, or within half a second
when its runner watches the files), so a device could reconnect in between: every takeover is
done again a few seconds later, when the reload has surely been applied.
"""

import asyncio
import contextlib
import ssl
import tempfile
from pathlib import Path

import aiomqtt
import anyio.to_thread
import structlog

from kernex_backend.core.config import MqttSettings
from kernex_backend.core.messaging import TrafficCounters
from kernex_provision.authority import (
    AuthorityError,
    CertificateAuthority,
    pem,
    write_private_key,
    write_public,
)

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
AGAIN_AFTER_S = 3.0
_CONCURRENCY = 8


class SessionTakeover:
    """Ends devices' broker sessions by taking them over with one-use certificates."""

    def __init__(
        self,
        settings: MqttSettings,
        authority: CertificateAuthority,
        stats: TrafficCounters,
        *,
        again_after_s: float = AGAIN_AFTER_S,
    ) -> None:
        self._settings = settings
        self._authority = authority
        self._stats = stats
        self._again_after_s = again_after_s
        self._limit = asyncio.Semaphore(_CONCURRENCY)
        self._later: set[asyncio.Task[None]] = set()

    async def end_sessions(self, device_ids: list[str]) -> int:
        """End the sessions of `device_ids` now and once more after the broker's reload; the
        number whose takeover connection was accepted now is returned."""
        ids = sorted(set(device_ids))
        if not ids:
            return 0
        ended = await self._take_over_all(ids)
        task = asyncio.create_task(self._again_later(ids))
        self._later.add(task)
        task.add_done_callback(self._later.discard)
        return ended

    async def _again_later(self, ids: list[str]) -> None:
        await asyncio.sleep(self._again_after_s)
        await self._take_over_all(ids)

    async def _take_over_all(self, ids: list[str]) -> int:
        results = await asyncio.gather(*(self._take_over(device_id) for device_id in ids))
        return sum(results)

    async def _take_over(self, device_id: str) -> bool:
        async with self._limit:
            try:
                context = await anyio.to_thread.run_sync(self._tls_context, device_id)
                async with aiomqtt.Client(
                    self._settings.host,
                    port=self._settings.port,
                    identifier=device_id,
                    tls_context=context,
                    clean_session=True,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    timeout=CONNECT_TIMEOUT_S,
                ):
                    pass
            except (AuthorityError, aiomqtt.MqttError, ssl.SSLError, OSError) as exc:
                self._stats.count("quarantine.takeover_failed")
                log.warning("session_takeover_failed", device_id=device_id, error=str(exc))
                return False
        self._stats.count("quarantine.sessions_taken_over")
        log.info("session_taken_over", device_id=device_id)
        return True

    def _tls_context(self, device_id: str) -> ssl.SSLContext:
        """A context presenting a fresh takeover certificate of `device_id` (blocking: the CA
        signs and writes its index). The key is on disk only inside a private temporary
        directory, for as long as the context takes to load it."""
        assert self._settings.ca_file is not None  # the settings refuse the bridge without it
        certificate, key = self._authority.issue_takeover(device_id)
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self._settings.ca_file)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="kernex-takeover-") as folder:
            cert_file, key_file = Path(folder) / "takeover.crt", Path(folder) / "takeover.key"
            write_private_key(key_file, key)
            write_public(cert_file, pem(certificate))
            context.load_cert_chain(str(cert_file), str(key_file))
        return context

    async def aclose(self) -> None:
        """Cancel the second passes still waiting (at shutdown)."""
        for task in list(self._later):
            task.cancel()
        for task in list(self._later):
            with contextlib.suppress(asyncio.CancelledError):
                await task
