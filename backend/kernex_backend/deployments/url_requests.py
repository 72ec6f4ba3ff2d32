"""Answering devices' url/request: a fresh presigned URL, only for a live execution of the
asking device's own, at most `mqtt.url_requests_per_minute` a minute per device (on top of the
device's traffic budget, which the bridge applies before parsing)."""

import datetime as dt
import uuid

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.bundles.models import Bundle
from kernex_backend.bundles.storage import BundleStorage
from kernex_backend.core.config import Settings
from kernex_backend.core.messaging import DevicePublisher, TrafficCounters
from kernex_backend.core.sliding_window import SlidingWindowLimit
from kernex_backend.deployments.models import (
    LIVE_STATES,
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
)
from kernex_protocol.payloads import UrlRequest, UrlResponse
from kernex_protocol.topics import Channel


class UrlRequests:
    """The handler of url/request messages."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: DevicePublisher,
        storage: BundleStorage,
        settings: Settings,
        stats: TrafficCounters,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._publisher = publisher
        self._storage = storage
        self._settings = settings
        self._stats = stats
        self._per_device = SlidingWindowLimit(settings.mqtt.url_requests_per_minute, 60.0)

    async def answer(self, device_id: str, request: UrlRequest) -> None:
        """Answer a url/request with a fresh URL, or say why there is none."""
        if not self._per_device.allow(device_id):
            self._stats.count("url_requests.rate_limited")
            return
        response = UrlResponse(
            request.request_id, request.deployment_id, error="deployment_not_active"
        )
        bundle = await self._live_bundle(device_id, request.deployment_id)
        if bundle is not None:
            expires = dt.timedelta(seconds=self._settings.storage.url_expiry_s)
            url = await self._storage.download_url(bundle.storage_key, expires)
            response = UrlResponse(
                request.request_id,
                request.deployment_id,
                url=url.url,
                expires_at=url.expires_at.isoformat(timespec="seconds"),
            )
            self._stats.count("url_requests.answered")
        else:
            self._stats.count("url_requests.refused")
        await self._publisher.publish_to(device_id, Channel.URL_RESPONSE, response.to_payload())

    async def _live_bundle(self, device_id: str, deployment_id: str) -> Bundle | None:
        try:
            deployment_uuid = uuid.UUID(deployment_id)
        except ValueError:
            return None
        async with self._sessionmaker() as session:
            return (
                await session.exec(
                    select(Bundle)
                    .join(Deployment, col(Deployment.bundle_id) == col(Bundle.id))
                    .join(
                        DeploymentExecution,
                        col(DeploymentExecution.deployment_id) == col(Deployment.id),
                    )
                    .where(
                        col(Deployment.id) == deployment_uuid,
                        # Paused: no new device starts, but those working finish.
                        col(Deployment.status).in_(
                            (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED)
                        ),
                        col(DeploymentExecution.device_id) == device_id,
                        col(DeploymentExecution.state).in_(LIVE_STATES),
                    )
                )
            ).first()
