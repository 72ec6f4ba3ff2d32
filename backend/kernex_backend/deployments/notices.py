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
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

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
from kernex_backend.core.keyed_locks import KeyedLocks
from kernex_backend.core.messaging import DevicePublisher, PublishFailed, TrafficCounters
from kernex_backend.deployments.models import (
    LIVE_STATES,
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_protocol.manifest import ReleaseManifest, SignedRelease, SignedRollback, key_id
from kernex_protocol.notice_template import NoticeTemplate
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
_LANES = 2  # batches in flight in publish_pending: one read and signed, one published

# The PENDING executions of running deployments, oldest first, locked for this transaction;
# rows another replica (or lane) has locked are skipped, not waited for.
_PENDING: Final = (
    sa.select(
        col(DeploymentExecution.id),
        col(DeploymentExecution.deployment_id),
        col(DeploymentExecution.device_id),
        col(DeploymentExecution.attempt),
        col(DeploymentExecution.start_delay_s),
        col(Deployment.bundle_id),
        col(Deployment.rollback_approval),
    )
    .join(Deployment, col(Deployment.id) == col(DeploymentExecution.deployment_id))
    .where(
        col(Deployment.status) == DeploymentStatus.RUNNING,
        col(DeploymentExecution.state) == ExecutionState.PENDING,
    )
    .order_by(col(DeploymentExecution.id))
    .limit(sa.bindparam("limit"))
    .with_for_update(of=DeploymentExecution, skip_locked=True)
)
# The batch's ids as one array: one cached statement, where `IN` over 1,000 ids was compiled
# for every batch.
_MARK_NOTIFIED: Final = sa.text(
    "UPDATE deployment_executions SET state = :state, notified_at = :now, updated_at = :now"
    " WHERE id = ANY(CAST(:ids AS bigint[]))"
).bindparams(state=ExecutionState.NOTIFIED.value)


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
        self._key_id = key_id(signing_key.public_key())
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self._storage = storage
        self._settings = settings
        self._stats = stats
        # Held from reading a device's notice to publishing it: a clear and a notice for one
        # device cannot overtake each other in this replica.
        self._device_locks = KeyedLocks()
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

    def _notices(self, urls: Mapping[uuid.UUID, DownloadUrl]) -> "_NoticeBatch":
        """A builder for the notices of one query's rows, valid for `notice.ttl_s` from now."""
        return _NoticeBatch(
            key=self._signing_key,
            kid=self._key_id,
            ttl=dt.timedelta(seconds=self._settings.notice.ttl_s),
            urls=urls,
        )

    async def publish_pending(self) -> int:
        """Notify PENDING executions of running deployments, a batch at a time until none is
        left (or the broker is gone); returns how many were notified.

        Two lanes take batches in turn, so one batch is read and signed while the one before
        it is published: each lane holds its rows locked (SKIP LOCKED keeps the lanes' rows
        apart) and publishes only when the other is done publishing.
        """
        turn = asyncio.Lock()
        lanes = await asyncio.gather(*(self._lane(turn) for _ in range(_LANES)))
        return sum(lanes)

    async def _lane(self, turn: asyncio.Lock) -> int:
        total = 0
        while True:
            taken, notified = await self._publish_batch(turn)
            total += notified
            if taken < self._settings.mqtt.notify_batch_size or notified < taken:
                return total

    async def _publish_batch(self, turn: asyncio.Lock) -> tuple[int, int]:
        """One batch of PENDING executions: (how many were taken, how many notified)."""
        async with self._sessionmaker() as session:
            connection = await session.connection()
            # Core rows, not the ORM's: building 1,000 ORM objects per batch cost more than
            # signing their notices. The batch's few bundles are loaded as entities apart.
            rows = (
                await connection.execute(_PENDING, {"limit": self._settings.mqtt.notify_batch_size})
            ).all()
            if not rows:
                return 0, 0
            wanted = {row.bundle_id for row in rows}
            bundles = {
                bundle.id: bundle
                for bundle in (
                    await session.exec(select(Bundle).where(col(Bundle.id).in_(wanted)))
                ).all()
            }
            notices = self._notices(await self._urls(bundles.values()))
            # Signing releases the GIL: in a thread, the batch's signatures are made while the
            # event loop publishes the batch before it.
            payloads = await asyncio.to_thread(
                lambda: [
                    notices.payload(row, bundles[row.bundle_id], row.rollback_approval)
                    for row in rows
                ]
            )

            devices = [row.device_id for row in rows]
            async with turn, self._device_locks.holding(devices):
                # Handed over at once, paced by the publisher's in-flight window; a row becomes
                # NOTIFIED only once the broker has acknowledged its notice, and one that was
                # not stays PENDING for the next round.
                published = await self._publisher.publish_many(
                    Channel.DEPLOYMENT, list(zip(devices, payloads, strict=True))
                )
            notified = [row.id for row, ok in zip(rows, published, strict=True) if ok]
            if notified:
                await connection.execute(_MARK_NOTIFIED, {"ids": notified, "now": utc_now()})
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
        async with self._device_locks.holding(ids):
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
            notices = self._notices(await self._urls(bundle for _, bundle, _ in live.values()))

            messages: list[tuple[str, bytes]] = []
            for device_id in ids:
                row = live.get(device_id)
                if row is None:
                    messages.append((device_id, b""))  # nothing live: clear the topic
                elif row[0].state != ExecutionState.PENDING:
                    messages.append((device_id, notices.payload(*row)))
            published = await self._publisher.publish_many(Channel.DEPLOYMENT, messages)
        cleared = sum(
            ok for (_, payload), ok in zip(messages, published, strict=True) if not payload
        )
        self._stats.count("notices.cleared", cleared)
        failed = published.count(False)
        if failed:
            raise PublishFailed(f"{failed} of {len(messages)} notice refreshes not acknowledged")

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
            size = self._settings.mqtt.notify_batch_size
            for start in range(0, len(devices), size):
                await self.refresh_devices(devices[start : start + size])
        self._stats.count("notices.reconciled", len(devices))
        return len(devices)


class _Addressee(Protocol):
    """What a notice needs of an execution (an ORM row or a row of its columns)."""

    @property
    def deployment_id(self) -> uuid.UUID: ...
    @property
    def device_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def start_delay_s(self) -> int: ...


class _NoticeBatch:
    """Builds the notices of one query's rows. What they share is encoded once per bundle and
    deployment (a NoticeTemplate: the signed release, the rollback approval, the URL, the
    validity window); per device only its values are written in and its claims signed: 10,000
    notices cost 10,000 signatures and little else."""

    def __init__(
        self,
        *,
        key: Ed25519PrivateKey,
        kid: str,
        ttl: dt.timedelta,
        urls: Mapping[uuid.UUID, DownloadUrl],
    ) -> None:
        now = utc_now()
        self._key, self._kid, self._urls = key, kid, urls
        self._issued_at = now.isoformat(timespec="seconds")
        self._expires_at = (now + ttl).isoformat(timespec="seconds")
        self._templates: dict[tuple[uuid.UUID, uuid.UUID], NoticeTemplate] = {}

    def payload(
        self,
        execution: "_Addressee",
        bundle: Bundle,
        rollback: Mapping[str, Any] | None,
    ) -> bytes:
        """The signed notice (re-signed at every publish); a rollback deployment's carries the
        release team's signed rollback approval."""
        shared = (bundle.id, execution.deployment_id)
        template = self._templates.get(shared)
        if template is None:
            url = self._urls[bundle.id]
            template = self._templates[shared] = NoticeTemplate(
                release=signed_release(bundle),
                issued_at=self._issued_at,
                expires_at=self._expires_at,
                url=url.url,
                url_expires_at=url.expires_at.isoformat(timespec="seconds"),
                rollback=None if rollback is None else SignedRollback.from_document(dict(rollback)),
            )
        return template.signed_payload(
            self._key,
            kid=self._kid,
            deployment_id=str(execution.deployment_id),
            device_id=execution.device_id,
            attempt=max(1, execution.attempt),
            start_delay_s=execution.start_delay_s,
        )
