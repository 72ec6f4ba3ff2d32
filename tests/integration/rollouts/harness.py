"""A rollout driven by hand against the real database: an injected clock, a controller with
it, and devices' reports through the real progress ingest."""

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.core.db import create_sessionmaker, utc_now
from kernex_backend.core.messaging import TrafficCounters
from kernex_backend.deployments import service
from kernex_backend.deployments.progress import ProgressIngest
from kernex_backend.deployments.rollout import RolloutController
from kernex_backend.deployments.schemas import DeploymentCreate
from kernex_protocol.payloads import ErrorCode, Progress, ProgressError, ProgressState


class Clock:
    """Time that moves only when told."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or utc_now()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class Rollout:
    """One test's rollout machinery."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self.sessionmaker: async_sessionmaker[AsyncSession] = create_sessionmaker(engine)
        self.clock = clock or Clock()
        self.withdrawn: list[str] = []
        self.stats = TrafficCounters()
        self.controller = self.make_controller()
        self.ingest = ProgressIngest(self.sessionmaker, self.stats, on_final=self._noop)
        self._seq = 1000

    def make_controller(self) -> RolloutController:
        async def withdraw(devices: list[str]) -> None:
            self.withdrawn += devices

        return RolloutController(
            self.sessionmaker,
            on_withdrawn=withdraw,
            clock=self.clock,
            rng=random.Random(1),
            dynamic_interval_s=10,
        )

    @staticmethod
    async def _noop(_: list[str]) -> None:
        return None

    async def create(self, body: dict[str, Any], *, actor: str = "test") -> uuid.UUID:
        async with self.sessionmaker() as session:
            deployment, _ = await service.create(
                session=session,
                request=DeploymentCreate.model_validate(body),
                actor=actor,
                rng=random.Random(2),
            )
        return deployment.id

    async def step(self, deployment_id: uuid.UUID, *, times: int = 1) -> None:
        for _ in range(times):
            await self.controller.step(deployment_id)

    async def states(self, deployment_id: uuid.UUID) -> dict[str, str]:
        """Each device's execution state."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT device_id, state FROM deployment_executions WHERE deployment_id = :d"
                ),
                {"d": deployment_id},
            )
            return {device: state for device, state in rows.all()}

    async def in_state(self, deployment_id: uuid.UUID, state: str) -> list[str]:
        return sorted(d for d, s in (await self.states(deployment_id)).items() if s == state)

    async def row(self, deployment_id: uuid.UUID) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.text("SELECT * FROM deployments WHERE id = :d"), {"d": deployment_id}
            )
            return dict(result.mappings().one())

    async def execution(self, deployment_id: uuid.UUID, device_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                sa.text(
                    "SELECT * FROM deployment_executions "
                    "WHERE deployment_id = :d AND device_id = :v"
                ),
                {"d": deployment_id, "v": device_id},
            )
            return dict(result.mappings().one())

    async def notify(self, deployment_id: uuid.UUID) -> list[str]:
        """What the notifier does once the broker acknowledged: PENDING -> NOTIFIED."""
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                sa.text(
                    "UPDATE deployment_executions SET state = 'notified', notified_at = :now "
                    "WHERE deployment_id = :d AND state = 'pending' RETURNING device_id"
                ),
                {"d": deployment_id, "now": self.clock()},
            )
            return sorted(rows.scalars().all())

    async def report(
        self,
        deployment_id: uuid.UUID,
        devices: Sequence[str],
        state: ProgressState,
        *,
        attempt: int | None = None,
        error: ErrorCode | None = None,
    ) -> None:
        """Each device reports `state` through the real progress ingest."""
        reports = []
        for device_id in devices:
            self._seq += 1
            reports.append(
                (
                    device_id,
                    Progress(
                        deployment_id=str(deployment_id),
                        state=state,
                        seq=self._seq,
                        sent_at=utc_now().isoformat(),
                        version="2.0.0",
                        error=None if error is None else ProgressError(error, "test"),
                        attempt=attempt,
                    ),
                )
            )
        await self.ingest.apply_batch(reports)
