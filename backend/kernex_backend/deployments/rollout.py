"""The rollout controller: which queued devices get their notice, and when.

Every execution starts QUEUED with its wave (devices are drawn in random order, the first ones
form the first wave). Each `step` of a deployment, under its row lock (`FOR UPDATE SKIP
LOCKED`: one replica steps a deployment at a time, and a replica killed mid-step rolls back and
loses nothing), does in one transaction:

1. start it at `start_at`; at `end_at` stop adding devices or cancel it;
2. time out devices that never started or work for too long;
3. `settle`: re-queue failures the retry policy covers (with backoff), complete the deployment
   when nothing is left to do;
4. pick up devices that match a dynamic selector now;
5. apply the abort rules: pause, or abort (withdraw what was not acted on, and with a rollback
   plan start the rollback deployment);
6. advance the wave once the current one met its success threshold, after the soak time and
   the operator's approval if asked for; a wave that ended below its threshold pauses;
7. admit queued devices of the current waves, as many as the rate allows, inside a maintenance
   window: QUEUED -> PENDING with a jitter delay drawn per device. The notifier (notices.py)
   then publishes PENDING executions.

It writes why the deployment waits (`waiting_for`) and events for the SSE stream. Every choice
is a pure function of the policy (strategy.py) and the counts, so the tests drive it with an
injected clock.
"""

import asyncio
import datetime as dt
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from kernex_backend.audit import service as audit
from kernex_backend.core import db_events
from kernex_backend.core.db import utc_now
from kernex_backend.deployments import events, targets
from kernex_backend.deployments.models import (
    LIVE_STATES,
    UNFINISHED_STATES,
    Deployment,
    DeploymentExecution,
    DeploymentStatus,
    ExecutionState,
)
from kernex_backend.deployments.schemas import Selector
from kernex_backend.deployments.strategy import (
    AbortRule,
    FailureType,
    RolloutStrategy,
    wave_ends,
    wave_of,
)

log = structlog.get_logger(__name__)

CONTROLLER = "rollout-controller"  # the actor in audit events the controller writes
ADMIT_BATCH = 5000  # admitted per step at most (the notifier publishes them in batches)
BURST_SPLIT = 10  # at most a tenth of a minute's rate within a tenth of a minute
FOLLOW_ABORTED = dt.timedelta(days=1)  # late successes of an aborted deployment are rolled back

# Withdrawn on cancel or abort: nothing on the device has changed yet. Devices already
# installing finish (or roll back) and report it; interrupting them is less safe.
WITHDRAWABLE = (
    ExecutionState.QUEUED,
    ExecutionState.PENDING,
    ExecutionState.NOTIFIED,
    ExecutionState.DOWNLOADING,
    ExecutionState.VERIFYING,
)
FAILED_STATES = (ExecutionState.FAILED, ExecutionState.TIMED_OUT, ExecutionState.ROLLED_BACK)
STARTED_STATES = tuple(s for s in LIVE_STATES if s != ExecutionState.NOTIFIED)


def strategy_of(deployment: Deployment) -> RolloutStrategy:
    """The deployment's stored policy (defaults for deployments stored before it existed)."""
    return RolloutStrategy.model_validate(deployment.strategy or {})


def rules_of(deployment: Deployment) -> list[AbortRule]:
    """The deployment's abort rules."""
    return [AbortRule.model_validate(r) for r in (deployment.abort_criteria or {}).get("rules", [])]


def failure_type(state: ExecutionState, device_state: str | None) -> FailureType | None:
    """How an execution ended badly, or None if it did not."""
    if state == ExecutionState.FAILED:
        return FailureType.REJECTED if device_state == "rejected" else FailureType.FAILED
    if state == ExecutionState.TIMED_OUT:
        return FailureType.TIMED_OUT
    if state == ExecutionState.ROLLED_BACK:
        return FailureType.ROLLED_BACK
    return None


@dataclass
class Tally:
    """A deployment's executions counted by wave and state, and failures by type."""

    by_wave: dict[int, Counter[ExecutionState]] = field(default_factory=dict)
    failures: Counter[FailureType] = field(default_factory=Counter)

    @property
    def total(self) -> Counter[ExecutionState]:
        """Counts over all waves."""
        out: Counter[ExecutionState] = Counter()
        for counts in self.by_wave.values():
            out.update(counts)
        return out

    @property
    def finished(self) -> int:
        """Executions that ended, other than by cancellation (the abort rules' denominator)."""
        total = self.total
        return sum(n for s, n in total.items() if s.terminal and s != ExecutionState.CANCELED)

    def success_percent(self, wave: int) -> float:
        """Succeeded devices of `wave` among those not canceled (100 for an empty wave)."""
        counts = self.by_wave.get(wave, Counter())
        size = sum(counts.values()) - counts[ExecutionState.CANCELED]
        return 100.0 if size <= 0 else 100.0 * counts[ExecutionState.SUCCEEDED] / size

    def wave_unfinished(self, wave: int) -> int:
        """Devices of `wave` that have not ended."""
        counts = self.by_wave.get(wave, Counter())
        return sum(n for s, n in counts.items() if not s.terminal)


async def tally(session: AsyncSession, deployment_id: uuid.UUID) -> Tally:
    """Count a deployment's executions by wave and state in one query."""
    # One literal, not a bound parameter: GROUP BY must repeat the very same expression.
    rejected = col(DeploymentExecution.device_state) == sa.literal_column("'rejected'")
    rows = await session.exec(
        select(
            DeploymentExecution.wave,
            DeploymentExecution.state,
            rejected,
            sa.func.count(),
        )
        .where(col(DeploymentExecution.deployment_id) == deployment_id)
        .group_by(col(DeploymentExecution.wave), col(DeploymentExecution.state), rejected)
    )
    result = Tally()
    for wave, state_value, was_rejected, count in rows.all():
        state = ExecutionState(state_value)
        result.by_wave.setdefault(wave, Counter())[state] += count
        kind = failure_type(state, "rejected" if was_rejected else None)
        if kind is not None:
            result.failures[kind] += count
    return result


async def _lock(
    session: AsyncSession, deployment_id: uuid.UUID, *, wait: bool
) -> Deployment | None:
    query = select(Deployment).where(col(Deployment.id) == deployment_id)
    query = query.with_for_update(skip_locked=not wait)
    return (await session.exec(query)).first()


async def end_executions(
    session: AsyncSession,
    deployment_id: uuid.UUID,
    states: tuple[ExecutionState, ...],
    *,
    state: ExecutionState,
    code: str,
    detail: str | None,
    now: dt.datetime,
    extra: list[Any] | None = None,
) -> list[str]:
    """Move this deployment's executions in `states` to a final `state`; returns their devices."""
    result = await session.exec(
        sa.update(DeploymentExecution)
        .where(
            col(DeploymentExecution.deployment_id) == deployment_id,
            col(DeploymentExecution.state).in_(states),
            *(extra or []),
        )
        .values(state=state, error_code=code, error_detail=detail, finished_at=now, updated_at=now)
        .returning(col(DeploymentExecution.device_id))
    )
    return [row[0] for row in result.all()]


async def _dynamic_open(
    session: AsyncSession, deployment: Deployment, strategy: RolloutStrategy, now: dt.datetime
) -> bool:
    """Whether a dynamic deployment still takes devices that match later: before its end
    time, and below its device cap."""
    if not deployment.target.get("dynamic"):
        return False
    end_at = strategy.schedule.end_at
    if end_at is not None and now >= end_at:
        return False
    cap = deployment.target.get("max_devices")
    if cap is None:
        return True
    taken = (
        await session.exec(
            select(sa.func.count())
            .select_from(DeploymentExecution)
            .where(col(DeploymentExecution.deployment_id) == deployment.id)
        )
    ).one()
    return bool(int(taken) < cap)


async def settle(
    session: AsyncSession, deployment_id: uuid.UUID, *, now: dt.datetime | None = None
) -> None:
    """Re-queue failures the retry policy covers and complete the deployment once nothing is
    left to do. Locks the deployment row (waits for it): two devices finishing at once in two
    transactions would otherwise each still see the other unfinished, and neither complete it."""
    deployment = await _lock(session, deployment_id, wait=True)
    if deployment is not None:
        await _settle_locked(session, deployment, now or utc_now())


async def _settle_locked(session: AsyncSession, deployment: Deployment, now: dt.datetime) -> None:
    if deployment.status not in (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED):
        return
    strategy = strategy_of(deployment)
    retry = strategy.retry
    if retry.max_retries > 0:
        failed = (
            await session.exec(
                select(DeploymentExecution).where(
                    col(DeploymentExecution.deployment_id) == deployment.id,
                    col(DeploymentExecution.state).in_(FAILED_STATES),
                    col(DeploymentExecution.attempt) <= retry.max_retries,
                )
            )
        ).all()
        requeued = 0
        for execution in failed:
            kind = failure_type(execution.state, execution.device_state)
            if kind is None or not retry.applies(kind, execution.error_code):
                continue
            execution.state = ExecutionState.QUEUED
            execution.not_before = now + retry.delay(execution.attempt)
            execution.finished_at = None
            execution.updated_at = now
            session.add(execution)
            requeued += 1
        if requeued:
            events.record(session, deployment.id, "retries_queued", devices=requeued)
            await session.flush()
    if deployment.status != DeploymentStatus.RUNNING or await _dynamic_open(
        session, deployment, strategy, now
    ):
        return
    unfinished = (
        await session.exec(
            select(sa.func.count())
            .select_from(DeploymentExecution)
            .where(
                col(DeploymentExecution.deployment_id) == deployment.id,
                col(DeploymentExecution.state).in_(UNFINISHED_STATES),
            )
        )
    ).one()
    if unfinished == 0:
        deployment.status = DeploymentStatus.COMPLETED
        deployment.finished_at = now
        deployment.updated_at = now
        deployment.waiting_for = None
        session.add(deployment)
        counts = (await tally(session, deployment.id)).total
        events.record(
            session,
            deployment.id,
            "completed",
            counts={s.value: n for s, n in counts.items()},
        )


@dataclass
class StepResult:
    """What a step changed that needs work after its commit."""

    admitted: int = 0
    withdraw: list[str] = field(default_factory=list)


class RolloutController:
    """Steps every open deployment; `run` under the fleet-state supervisor, `tick` in tests."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        on_admitted: Callable[[], None] = lambda: None,
        on_withdrawn: Callable[[list[str]], Awaitable[None]] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        rng: random.Random | None = None,
        dynamic_interval_s: float = 10.0,
    ) -> None:
        """`on_admitted` wakes the notifier; `on_withdrawn` refreshes the notices of devices
        whose executions ended (cancel, abort, timeout). `clock` is injectable for tests."""
        self._sessionmaker = sessionmaker
        # Public: the composition root connects them once the notice service exists.
        self.on_admitted = on_admitted
        self.on_withdrawn = on_withdrawn
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - draw order and jitter, not secrets
        self._dynamic_interval = dt.timedelta(seconds=dynamic_interval_s)
        self._last_pickup: dict[uuid.UUID, dt.datetime] = {}
        self._last_counts: dict[uuid.UUID, dict[str, int]] = {}
        self.wake_event = asyncio.Event()

    def wake(self) -> None:
        """Have the controller step now (a device finished, an operator acted)."""
        self.wake_event.set()

    async def tick(self) -> int:
        """Step every deployment that may need it; returns how many were stepped."""
        now = self._clock()
        async with self._sessionmaker() as session:
            ids = (
                await session.exec(
                    select(Deployment.id).where(
                        sa.or_(
                            col(Deployment.status).in_(
                                (DeploymentStatus.SCHEDULED, DeploymentStatus.RUNNING)
                            ),
                            sa.and_(
                                col(Deployment.status) == DeploymentStatus.ABORTED,
                                col(Deployment.rollback_bundle_id).is_not(None),
                                col(Deployment.finished_at) > now - FOLLOW_ABORTED,
                            ),
                        )
                    )
                )
            ).all()
        for deployment_id in ids:
            await self.step(deployment_id)
        return len(ids)

    async def step(self, deployment_id: uuid.UUID) -> StepResult:
        """One step of one deployment (skipped if another replica is stepping it)."""
        result = StepResult()
        async with self._sessionmaker() as session:
            deployment = await _lock(session, deployment_id, wait=False)
            if deployment is None:
                return result
            now = self._clock()
            if deployment.status == DeploymentStatus.ABORTED:
                await _follow_up_rollback(session, deployment, now)
            else:
                await self._step_locked(session, deployment, now, result)
            if result.admitted:
                # Every replica's notifier takes batches of them: wake them all on commit.
                connection = await session.connection()
                await connection.execute(db_events.notify(db_events.NOTICES_PENDING))
            await session.commit()
        if result.admitted:
            self.on_admitted()
        if result.admitted >= ADMIT_BATCH:
            # The step stopped at its cap, not at a limit of the deployment's: admit the next
            # devices now rather than at the next tick.
            self.wake()
        if result.withdraw and self.on_withdrawn is not None:
            try:
                await self.on_withdrawn(result.withdraw)
            except Exception:  # committed; the reconciler withdraws the notices later
                log.warning(
                    "withdraw_deferred",
                    deployment_id=str(deployment_id),
                    devices=len(result.withdraw),
                )
        return result

    async def _step_locked(
        self, session: AsyncSession, deployment: Deployment, now: dt.datetime, result: StepResult
    ) -> None:
        strategy = strategy_of(deployment)
        schedule = strategy.schedule
        if deployment.status == DeploymentStatus.SCHEDULED:
            if schedule.start_at is not None and now < schedule.start_at:
                deployment.waiting_for = f"start_at: starts at {schedule.start_at.isoformat()}"
                session.add(deployment)
                return
            deployment.status = DeploymentStatus.RUNNING
            deployment.started_at = now
            events.record(session, deployment.id, "started")
        ended = schedule.end_at is not None and now >= schedule.end_at
        if ended and await self._end(session, deployment, strategy, now, result):
            return
        result.withdraw += await self._time_out(session, deployment, strategy, now)
        await _settle_locked(session, deployment, now)
        if deployment.status != DeploymentStatus.RUNNING:
            self._record_progress(session, deployment, await tally(session, deployment.id))
            return
        if await _dynamic_open(session, deployment, strategy, now):
            await self._pick_up(session, deployment, now)
        counts = await tally(session, deployment.id)
        if await self._apply_rules(session, deployment, counts, now, result):
            return
        waiting = self._advance(session, deployment, strategy, counts, now)
        if deployment.status == DeploymentStatus.RUNNING:
            admitted, admit_waiting = await self._admit(session, deployment, strategy, counts, now)
            result.admitted += admitted
            waiting = waiting or admit_waiting
        deployment.waiting_for = waiting[:256] if waiting else None
        session.add(deployment)
        self._record_progress(session, deployment, await tally(session, deployment.id))

    def _record_progress(
        self, session: AsyncSession, deployment: Deployment, counts: Tally
    ) -> None:
        snapshot = {s.value: n for s, n in counts.total.items() if n}
        if self._last_counts.get(deployment.id) != snapshot:
            self._last_counts[deployment.id] = snapshot
            events.record(
                session,
                deployment.id,
                "progress",
                counts=snapshot,
                current_wave=deployment.current_wave,
                waiting_for=deployment.waiting_for,
            )
        if deployment.status.finished:
            self._last_counts.pop(deployment.id, None)
            self._last_pickup.pop(deployment.id, None)

    async def _end(
        self,
        session: AsyncSession,
        deployment: Deployment,
        strategy: RolloutStrategy,
        now: dt.datetime,
        result: StepResult,
    ) -> bool:
        """At end_at: cancel, or stop adding devices. True if the deployment ended."""
        if strategy.schedule.end_behavior == "cancel":
            result.withdraw += await end_executions(
                session,
                deployment.id,
                WITHDRAWABLE,
                state=ExecutionState.CANCELED,
                code="deployment_ended",
                detail="the deployment reached its end time",
                now=now,
            )
            deployment.status = DeploymentStatus.CANCELED
            deployment.finished_at = now
            deployment.updated_at = now
            deployment.waiting_for = None
            session.add(deployment)
            events.record(session, deployment.id, "ended", behavior="cancel")
            audit.record(
                session,
                actor=CONTROLLER,
                action="deployment.end",
                object_type="deployment",
                object_id=str(deployment.id),
                details={"behavior": "cancel", "withdrawn": len(result.withdraw)},
            )
            return True
        stopped = await end_executions(
            session,
            deployment.id,
            (ExecutionState.QUEUED,),
            state=ExecutionState.CANCELED,
            code="deployment_ended",
            detail="the deployment reached its end time before this device's turn",
            now=now,
        )
        if stopped:
            events.record(
                session, deployment.id, "ended", behavior="stop_adding", devices=len(stopped)
            )
        return False

    async def _time_out(
        self,
        session: AsyncSession,
        deployment: Deployment,
        strategy: RolloutStrategy,
        now: dt.datetime,
    ) -> list[str]:
        timeouts = strategy.timeouts
        ended: list[str] = []
        if timeouts.not_started_s is not None:
            # The device's jitter delay is its own: the clock starts after it.
            deadline = col(DeploymentExecution.notified_at) + sa.func.make_interval(
                0, 0, 0, 0, 0, 0, col(DeploymentExecution.start_delay_s) + timeouts.not_started_s
            )
            ended += await end_executions(
                session,
                deployment.id,
                (ExecutionState.NOTIFIED,),
                state=ExecutionState.TIMED_OUT,
                code="not_started",
                detail=f"did not start within {timeouts.not_started_s} s of its notice",
                now=now,
                extra=[deadline < now],
            )
        if timeouts.in_progress_s is not None:
            ended += await end_executions(
                session,
                deployment.id,
                STARTED_STATES,
                state=ExecutionState.TIMED_OUT,
                code="in_progress_timeout",
                detail=f"not finished within {timeouts.in_progress_s} s of starting",
                now=now,
                extra=[
                    col(DeploymentExecution.started_at)
                    < now - dt.timedelta(seconds=timeouts.in_progress_s)
                ],
            )
        if ended:
            events.record(session, deployment.id, "timed_out", devices=len(ended))
            await session.flush()
        return ended

    async def _pick_up(
        self, session: AsyncSession, deployment: Deployment, now: dt.datetime
    ) -> None:
        """Add devices that match the dynamic selector now, into the last wave."""
        last = self._last_pickup.get(deployment.id)
        if last is not None and now - last < self._dynamic_interval:
            return
        self._last_pickup[deployment.id] = now
        existing = set(
            (
                await session.exec(
                    select(DeploymentExecution.device_id).where(
                        col(DeploymentExecution.deployment_id) == deployment.id
                    )
                )
            ).all()
        )
        cap = deployment.target.get("max_devices")
        room = None if cap is None else cap - len(existing)
        if room is not None and room <= 0:
            return
        selector = Selector.model_validate(deployment.target["selector"])
        device_type = deployment.target["device_type"]
        found = targets.without_busy(
            await targets.selected(
                session,
                selector,
                device_type=device_type,
                now=now,
                besides=deployment.id,
                exclude=existing,
            )
        ).devices
        self._rng.shuffle(found)
        if room is not None:
            found = found[:room]
        if not found:
            return
        wave = len(strategy_of(deployment).waves) - 1
        start = len(existing)
        await insert_executions(
            session, deployment.id, found, waves=[wave] * len(found), first=start
        )
        events.record(session, deployment.id, "devices_joined", devices=len(found))
        log.info("dynamic_devices_joined", deployment_id=str(deployment.id), devices=len(found))

    async def _apply_rules(
        self,
        session: AsyncSession,
        deployment: Deployment,
        counts: Tally,
        now: dt.datetime,
        result: StepResult,
    ) -> bool:
        """Pause or abort if a rule trips; True if the deployment stopped."""
        finished = counts.finished
        for rule in rules_of(deployment):
            if rule.action == "pause" and (deployment.resumed_at_finished or 0) >= finished:
                continue  # resumed by an operator: wait for new results before pausing again
            if not rule.tripped(finished, counts.failures):
                continue
            failures = {k.value: v for k, v in counts.failures.items()}
            reason = (
                f"{'+'.join(t.value for t in rule.failure_types)} reached "
                f"{rule.threshold_percent:g}% of {finished} finished"
            )
            if rule.action == "pause":
                deployment.status = DeploymentStatus.PAUSED
                deployment.pause_reason = f"abort rule: {reason}"[:256]
                deployment.updated_at = now
                session.add(deployment)
                events.record(session, deployment.id, "paused", reason=reason, failures=failures)
                audit.record(
                    session,
                    actor=CONTROLLER,
                    action="deployment.pause",
                    object_type="deployment",
                    object_id=str(deployment.id),
                    details={"reason": reason},
                )
                return True
            result.withdraw += await abort(session, deployment, reason=reason, now=now)
            return True
        return False

    def _advance(
        self,
        session: AsyncSession,
        deployment: Deployment,
        strategy: RolloutStrategy,
        counts: Tally,
        now: dt.datetime,
    ) -> str | None:
        """Start the next wave(s) when allowed; returns why the rollout waits, if it does."""
        last_wave = len(strategy.waves) - 1
        while deployment.current_wave < last_wave:
            wave = deployment.current_wave
            success = counts.success_percent(wave)
            reached = success >= strategy.success_threshold_percent
            if not reached and deployment.forced_wave <= wave:
                if counts.wave_unfinished(wave) == 0:
                    reason = (
                        f"wave {wave} ended at {success:.1f}% success, below its "
                        f"{strategy.success_threshold_percent:g}% threshold"
                    )
                    deployment.status = DeploymentStatus.PAUSED
                    deployment.pause_reason = reason
                    deployment.updated_at = now
                    events.record(session, deployment.id, "paused", reason=reason)
                    return None
                return (
                    f"threshold: wave {wave} at {success:.1f}% success of "
                    f"{strategy.success_threshold_percent:g}% needed"
                )
            if deployment.wave_reached_at is None:
                deployment.wave_reached_at = now
                events.record(session, deployment.id, "wave_succeeded", wave=wave, success=success)
            soak_ends = deployment.wave_reached_at + dt.timedelta(seconds=strategy.soak_s)
            if now < soak_ends:
                return f"soak: wave {wave + 1} starts at {soak_ends.isoformat(timespec='seconds')}"
            if strategy.approval_required and deployment.approved_wave <= wave:
                return f"approval: wave {wave + 1} waits for POST /deployments/{{id}}/approve"
            deployment.current_wave = wave + 1
            deployment.wave_reached_at = None
            deployment.updated_at = now
            events.record(session, deployment.id, "wave_started", wave=wave + 1)
            log.info("wave_started", deployment_id=str(deployment.id), wave=wave + 1)
        return None

    async def _admit(
        self,
        session: AsyncSession,
        deployment: Deployment,
        strategy: RolloutStrategy,
        counts: Tally,
        now: dt.datetime,
    ) -> tuple[int, str | None]:
        """Queued devices of the open waves become PENDING, within rate and windows."""
        schedule = strategy.schedule
        if not schedule.window_open(now):
            upcoming = schedule.next_window(now)
            when = upcoming.isoformat(timespec="minutes") if upcoming else "not within a week"
            return 0, f"window: the next maintenance window opens {when}"
        limit = ADMIT_BATCH
        rate = strategy.rate
        if rate is not None:
            per_minute = rate.per_minute_now(counts.total[ExecutionState.SUCCEEDED])
            minute = await _admitted_since(session, deployment.id, now - dt.timedelta(minutes=1))
            burst = await _admitted_since(
                session, deployment.id, now - dt.timedelta(seconds=60 / BURST_SPLIT)
            )
            burst_cap = max(1, -(-per_minute // BURST_SPLIT))
            limit = min(limit, per_minute - minute, burst_cap - burst)
            if limit <= 0:
                return 0, f"rate: {per_minute} notices a minute reached"
        candidates = (
            sa.select(col(DeploymentExecution.id))
            .where(
                col(DeploymentExecution.deployment_id) == deployment.id,
                col(DeploymentExecution.state) == ExecutionState.QUEUED,
                col(DeploymentExecution.wave) <= deployment.current_wave,
                sa.or_(
                    col(DeploymentExecution.not_before).is_(None),
                    col(DeploymentExecution.not_before) <= now,
                ),
            )
            .order_by(col(DeploymentExecution.wave), col(DeploymentExecution.position))
            .limit(limit)
            .scalar_subquery()
        )
        jitter = strategy.jitter_s
        result = await session.exec(
            sa.update(DeploymentExecution)
            .where(col(DeploymentExecution.id).in_(candidates))
            .values(
                state=ExecutionState.PENDING,
                attempt=col(DeploymentExecution.attempt) + 1,
                admitted_at=now,
                updated_at=now,
                not_before=None,
                start_delay_s=sa.cast(sa.func.floor(sa.func.random() * (jitter + 1)), sa.Integer)
                if jitter
                else 0,
                error_code=None,
                error_detail=None,
                device_state=None,
                progress=0,
                notified_at=None,
                reported_at=None,
                started_at=None,
                finished_at=None,
            )
            # Counted, not returned, and no ORM objects of these rows are in the session to
            # bring up to date: returning 5,000 ids and looking each up in the session took
            # two thirds of a 5,000-device admission (0.17 s against 0.06 s).
            .execution_options(synchronize_session=False)
        )
        admitted = result.rowcount
        if admitted:
            events.record(session, deployment.id, "admitted", devices=admitted)
        return admitted, None


async def _admitted_since(
    session: AsyncSession, deployment_id: uuid.UUID, since: dt.datetime
) -> int:
    result = await session.exec(
        select(sa.func.count())
        .select_from(DeploymentExecution)
        .where(
            col(DeploymentExecution.deployment_id) == deployment_id,
            col(DeploymentExecution.admitted_at) > since,
        )
    )
    return int(result.one())


# One statement for any number of rows: the rows travel as three arrays (asyncpg's executemany
# sent 10,000 rows as 10,000 executions, 1.3 s of a 10,000-device POST; this takes a tenth).
_INSERT_EXECUTIONS: Final = sa.text(
    "INSERT INTO deployment_executions (deployment_id, device_id, state, attempt, progress,"
    " wave, position, start_delay_s, created_at, updated_at)"
    " SELECT CAST(:deployment_id AS uuid), device_id, CAST(:state AS varchar), 0, 0, wave,"
    " position, 0, CAST(:now AS timestamptz), CAST(:now AS timestamptz)"
    " FROM unnest(CAST(:device_ids AS text[]), CAST(:waves AS integer[]),"
    " CAST(:positions AS integer[])) AS queued(device_id, wave, position)"
)


async def insert_executions(
    session: AsyncSession,
    deployment_id: uuid.UUID,
    device_ids: list[str],
    *,
    waves: list[int],
    first: int = 0,
) -> None:
    """Insert QUEUED executions, in draw order from `first`, in one statement."""
    if not device_ids:
        return
    if len(waves) != len(device_ids):
        raise ValueError("one wave per device")
    connection = await session.connection()
    await connection.execute(
        _INSERT_EXECUTIONS,
        {
            "deployment_id": deployment_id,
            "state": ExecutionState.QUEUED.value,
            "now": utc_now(),
            "device_ids": device_ids,
            "waves": waves,
            "positions": list(range(first, first + len(device_ids))),
        },
    )


async def abort(
    session: AsyncSession, deployment: Deployment, *, reason: str, now: dt.datetime
) -> list[str]:
    """Abort: withdraw every notice not acted on, end ABORTED, audit it, and start the
    rollback deployment if there is a plan; returns the devices whose notices to refresh."""
    withdrawn = await end_executions(
        session,
        deployment.id,
        WITHDRAWABLE,
        state=ExecutionState.CANCELED,
        code="aborted",
        detail=f"deployment aborted: {reason}"[:1024],
        now=now,
    )
    deployment.status = DeploymentStatus.ABORTED
    deployment.finished_at = now
    deployment.updated_at = now
    deployment.waiting_for = None
    deployment.pause_reason = f"aborted: {reason}"[:256]
    session.add(deployment)
    events.record(session, deployment.id, "aborted", reason=reason, withdrawn=len(withdrawn))
    audit.record(
        session,
        actor=CONTROLLER,
        action="deployment.abort",
        object_type="deployment",
        object_id=str(deployment.id),
        details={"reason": reason, "withdrawn": len(withdrawn)},
    )
    log.warning("deployment_aborted", deployment_id=str(deployment.id), reason=reason)
    if deployment.rollback_bundle_id is not None:
        await _follow_up_rollback(session, deployment, now)
    return withdrawn


async def _follow_up_rollback(
    session: AsyncSession, deployment: Deployment, now: dt.datetime
) -> None:
    """Every device that installed the aborted deployment's version gets the rollback: the
    rollback deployment is created on abort, and devices that were still installing then and
    succeeded since are added to it."""
    if deployment.rollback_bundle_id is None:
        return
    child = (
        await session.exec(select(Deployment).where(col(Deployment.rollback_of) == deployment.id))
    ).first()
    installed = (
        await session.exec(
            select(DeploymentExecution.device_id).where(
                col(DeploymentExecution.deployment_id) == deployment.id,
                col(DeploymentExecution.state) == ExecutionState.SUCCEEDED,
            )
        )
    ).all()
    if child is None:
        child = Deployment(
            name=f"rollback: {deployment.name}"[:128],
            bundle_id=deployment.rollback_bundle_id,
            target={"device_ids": sorted(installed), "rollback_of": str(deployment.id)},
            strategy={},
            abort_criteria={},
            status=DeploymentStatus.RUNNING,
            created_by=CONTROLLER,
            started_at=now,
            rollback_approval=deployment.rollback_approval,
            rollback_of=deployment.id,
        )
        session.add(child)
        await session.flush()
        await insert_executions(session, child.id, sorted(installed), waves=[0] * len(installed))
        events.record(
            session,
            deployment.id,
            "rollback_started",
            rollback_deployment_id=str(child.id),
            devices=len(installed),
        )
        events.record(session, child.id, "started", rollback_of=str(deployment.id))
        audit.record(
            session,
            actor=CONTROLLER,
            action="deployment.rollback",
            object_type="deployment",
            object_id=str(child.id),
            details={"rollback_of": str(deployment.id), "devices": len(installed)},
        )
        return
    covered = set(
        (
            await session.exec(
                select(DeploymentExecution.device_id).where(
                    col(DeploymentExecution.deployment_id) == child.id
                )
            )
        ).all()
    )
    late = sorted(set(installed) - covered)
    if not late:
        return
    await insert_executions(session, child.id, late, waves=[0] * len(late), first=len(covered))
    if child.status == DeploymentStatus.COMPLETED:
        child.status = DeploymentStatus.RUNNING
        child.finished_at = None
    child.updated_at = now
    session.add(child)
    events.record(session, child.id, "devices_joined", devices=len(late))


def draw(
    device_ids: list[str], strategy: RolloutStrategy, rng: random.Random
) -> tuple[list[str], list[int]]:
    """The devices in random draw order and the wave of each."""
    order = list(device_ids)
    rng.shuffle(order)
    ends = wave_ends(list(strategy.waves), len(order))
    return order, [wave_of(i, ends) for i in range(len(order))]
