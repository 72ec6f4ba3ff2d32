"""Deployment notices: what each targeted device finds retained on its deployment topic.

PostgreSQL is the source of truth; the broker's retained messages are a cache of it:

- `publish_pending` takes PENDING executions of running deployments with
  `FOR UPDATE SKIP LOCKED`, publishes each notice (retained, QoS 1, acknowledged) and marks it
  NOTIFIED in the same transaction, a batch at a time until none is left. Replicas never take
  the same rows, and a replica that dies before committing leaves its rows PENDING for the next
  one: no notice is lost, none is sent by two replicas. It runs every `notify_interval_s`, and
  at once when this replica creates a deployment (`wake`).
- `refresh_device` publishes a device's current notice, or clears it (an empty retained
  message) when it has no live execution: after a final report, a cancel or a timeout.
- `reconcile` re-publishes every live notice (with a fresh URL) and refreshes devices whose
  executions ended recently, in case the broker lost its retained store or a replica died
  between a commit and its publish. It runs under an advisory lock: one replica at a time.

URL requests are answered by url_requests.py; timeouts and completion are lifecycle.py's.
"""

import asyncio
import contextlib
import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.storage import BundleStorage, DownloadUrl
from kernex_backend.core.config import Settings
from kernex_backend.core.db import utc_now
from kernex_backend.core.messaging import DevicePublisher, PublishFailed, TrafficCounters
from kernex_backend.deployments.models import (
    LIVE_STATES,
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_protocol.manifest import ReleaseManifest, SignedRelease, SignedRollback
from kernex_protocol.payloads import Notice
from kernex_protocol.topics import Channel

log = structlog.get_logger(__name__)


def load_notice_key(path: Path) -> Ed25519PrivateKey:
    """The online notice key (Ed25519, PEM, unencrypted: the service must start unattended;
    protect it as a secret file)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


_RECONCILE_LOCK = 0x4B4E5801  # "KNX" + 1: one reconciler across replicas


def signed_release(bundle: Bundle) -> SignedRelease:
    """The signed manifest of a bundle, rebuilt exactly as the release team signed it."""
    if bundle.manifest_created_at is None or bundle.signature is None:
        raise ValueError(f"bundle {bundle.id} has no stored signed manifest")
    manifest = ReleaseManifest(
        name=bundle.name,
        version=bundle.version,
        device_type=bundle.device_type,
        sha256=bundle.sha256,
        size=bundle.size_bytes,
        created_at=bundle.manifest_created_at,
    )
    return SignedRelease(manifest, bundle.signature, bundle.signing_key_id)


class NoticeService:
    """Publishes, clears and reconciles notices; answers URL requests."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: DevicePublisher,
        storage: BundleStorage,
        settings: Settings,
        stats: TrafficCounters,
        signing_key: Ed25519PrivateKey,
    ) -> None:
        """`signing_key` is the online notice key: every notice is signed with it."""
        self._signing_key = signing_key
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self._storage = storage
        self._settings = settings
        self._stats = stats
        self._device_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Set when there may be PENDING executions to notify (a deployment was just created).
        self.pending = asyncio.Event()

    def wake(self) -> None:
        """Have the notifier run now instead of at its next interval."""
        self.pending.set()

    async def _urls(self, bundles: Iterable[Bundle]) -> dict[uuid.UUID, DownloadUrl]:
        """One presigned URL per bundle, shared by the devices notified in one batch.

        A presigned URL is a bearer token for one object until it expires, bound to no device,
        so a URL per device would grant nothing less; signing 1,000 of them cost more than
        publishing the notices.
        """
        expires = dt.timedelta(seconds=self._settings.storage.url_expiry_s)
        urls: dict[uuid.UUID, DownloadUrl] = {}
        for bundle in bundles:
            if bundle.id not in urls:
                urls[bundle.id] = await self._storage.download_url(bundle.storage_key, expires)
        return urls

    def _notice(
        self,
        execution: DeploymentExecution,
        bundle: Bundle,
        url: DownloadUrl,
        rollback: Mapping[str, Any] | None,
    ) -> bytes:
        """The signed notice, valid for `notice.ttl_s` from now (re-signed at every publish);
        a rollback deployment's carries the release team's signed rollback approval."""
        now = utc_now()
        notice = Notice(
            deployment_id=str(execution.deployment_id),
            device_id=execution.device_id,
            release=signed_release(bundle),
            issued_at=now.isoformat(timespec="seconds"),
            expires_at=(now + dt.timedelta(seconds=self._settings.notice.ttl_s)).isoformat(
                timespec="seconds"
            ),
            url=url.url,
            url_expires_at=url.expires_at.isoformat(timespec="seconds"),
            rollback=None if rollback is None else SignedRollback.from_document(dict(rollback)),
            attempt=max(1, execution.attempt),
            start_delay_s=execution.start_delay_s,
        )
        return notice.signed_with(self._signing_key).to_payload()

    async def _publish_notice(self, device_id: str, payload: bytes) -> None:
        await self._publisher.publish_to(device_id, Channel.DEPLOYMENT, payload)

    async def publish_pending(self) -> int:
        """Notify PENDING executions of running deployments, a batch at a time until none is
        left (or the broker is gone); returns how many were notified."""
        total = 0
        while True:
            taken, notified = await self._publish_batch()
            total += notified
            if taken < self._settings.mqtt.notify_batch_size or notified < taken:
                return total

    async def _publish_batch(self) -> tuple[int, int]:
        """One batch of PENDING executions: (how many were taken, how many notified)."""
        async with self._sessionmaker() as session:
            rows = (
                await session.exec(
                    select(DeploymentExecution, Bundle, Deployment.rollback_approval)
                    .join(Deployment, col(Deployment.id) == col(DeploymentExecution.deployment_id))
                    .join(Bundle, col(Bundle.id) == col(Deployment.bundle_id))
                    .where(
                        col(Deployment.status) == DeploymentStatus.RUNNING,
                        col(DeploymentExecution.state) == ExecutionState.PENDING,
                    )
                    .order_by(col(DeploymentExecution.id))
                    .limit(self._settings.mqtt.notify_batch_size)
                    .with_for_update(of=DeploymentExecution, skip_locked=True)
                )
            ).all()
            urls = await self._urls(bundle for _, bundle, _ in rows)
            slots = asyncio.Semaphore(self._settings.mqtt.publish_concurrency)

            async def publish(
                execution: DeploymentExecution, bundle: Bundle, rollback: Mapping[str, Any] | None
            ) -> bool:
                async with slots, self._device_locks[execution.device_id]:
                    try:
                        payload = self._notice(
                            execution,
                            bundle,
                            urls[bundle.id],
                            rollback,
                        )
                        await self._publish_notice(execution.device_id, payload)
                    except PublishFailed:
                        return False  # stays PENDING for the next round
                    return True

            # Published concurrently (each waits for its acknowledgement); a row becomes
            # NOTIFIED only once the broker has its notice.
            published = await asyncio.gather(*(publish(e, b, r) for e, b, r in rows))
            notified = [e.id for (e, _, _), ok in zip(rows, published, strict=True) if ok]
            if notified:
                now = utc_now()
                mark: Any = (
                    sa.update(DeploymentExecution)
                    .where(col(DeploymentExecution.id).in_(notified))
                    .values(state=ExecutionState.NOTIFIED, notified_at=now, updated_at=now)
                )
                await session.exec(mark)
            await session.commit()
        if notified:
            self._stats.count("notices.published", len(notified))
            log.info("notices_published", count=len(notified))
        return len(rows), len(notified)

    async def refresh_device(self, device_id: str) -> None:
        """Publish the device's live notice, or clear its topic if it has none."""
        await self.refresh_devices([device_id])

    async def refresh_devices(self, device_ids: Sequence[str]) -> None:
        """Publish each device's live notice, or clear its topic if it has none: one query for
        all of them (a rollout's devices finish by the hundred), then their publishes.

        A PENDING execution counts as live but is left to `publish_pending`: clearing the topic
        then could land after that new notice and withdraw it. Publishes to one device are
        serialised in this replica (its lock is held from the query to the publish), so a clear
        and a notice cannot overtake each other. PublishFailed if the broker is gone.
        """
        ids = sorted(set(device_ids))
        async with contextlib.AsyncExitStack() as held:
            for device_id in ids:  # in one order, so two refreshes cannot deadlock
                await held.enter_async_context(self._device_locks[device_id])
            async with self._sessionmaker() as session:
                rows = (
                    await session.exec(
                        select(DeploymentExecution, Bundle, Deployment.rollback_approval)
                        .join(
                            Deployment,
                            col(Deployment.id) == col(DeploymentExecution.deployment_id),
                        )
                        .join(Bundle, col(Bundle.id) == col(Deployment.bundle_id))
                        .where(
                            col(DeploymentExecution.device_id).in_(ids),
                            # Notified devices keep their notice while they work, whatever
                            # became of the deployment (paused, or aborted while they install).
                            sa.or_(
                                col(DeploymentExecution.state).in_(LIVE_STATES),
                                sa.and_(
                                    col(DeploymentExecution.state) == ExecutionState.PENDING,
                                    col(Deployment.status) == DeploymentStatus.RUNNING,
                                ),
                            ),
                        )
                        .order_by(col(DeploymentExecution.id))
                    )
                ).all()
            # A device's newest live execution wins (later rows overwrite earlier ones).
            live = {row[0].device_id: row for row in rows}
            urls = await self._urls(bundle for _, bundle, _ in live.values())
            slots = asyncio.Semaphore(self._settings.mqtt.publish_concurrency)

            async def refresh(device_id: str) -> None:
                async with slots:
                    row = live.get(device_id)
                    if row is None:
                        await self._publish_notice(device_id, b"")
                        self._stats.count("notices.cleared")
                    elif row[0].state != ExecutionState.PENDING:
                        execution, bundle, rollback = row
                        payload = self._notice(
                            execution,
                            bundle,
                            urls[bundle.id],
                            rollback,
                        )
                        await self._publish_notice(device_id, payload)

            results = await asyncio.gather(*(refresh(d) for d in ids), return_exceptions=True)
        for device_id in ids:
            if not self._device_locks[device_id].locked():
                self._device_locks.pop(device_id, None)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def reconcile(self) -> int:
        """Re-publish live notices and refresh recently ended ones; one replica at a time."""
        async with self._sessionmaker() as session:
            locked = (
                await session.exec(  # type: ignore[call-overload]
                    sa.select(sa.func.pg_try_advisory_xact_lock(_RECONCILE_LOCK))
                )
            ).scalar_one()
            if not locked:
                return 0
            window = dt.timedelta(seconds=2 * self._settings.mqtt.reconcile_interval_s)
            devices = (
                await session.exec(
                    select(DeploymentExecution.device_id)
                    .join(Deployment, col(Deployment.id) == col(DeploymentExecution.deployment_id))
                    .where(
                        sa.or_(
                            col(DeploymentExecution.state).in_(LIVE_STATES),
                            col(DeploymentExecution.finished_at) > utc_now() - window,
                        )
                    )
                    .distinct()
                )
            ).all()
            for device_id in devices:
                await self.refresh_device(device_id)
        self._stats.count("notices.reconciled", len(devices))
        return len(devices)
