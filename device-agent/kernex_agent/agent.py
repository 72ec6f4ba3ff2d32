"""The agent: keeps the connection, beats, and turns deployment notices into updates.

Three things run side by side in one event loop: the MQTT transport (its own thread, messages
handed over with call_soon_threadsafe), the heartbeat loop, and the update loop. The update loop
first resumes an update a crash interrupted, then acts on each new notice: verify, then run the
state machine to IDLE. Only one update runs at a time; a newer notice arriving meanwhile
cancels the current one if it has not reached INSTALLING, and is considered next.
"""

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import kernex_agent
from kernex_agent import liveness
from kernex_agent.backoff import uniform
from kernex_agent.certificate import serial_number
from kernex_agent.config import AgentConfig
from kernex_agent.counter import PersistentCounter
from kernex_agent.faults import FaultInjector
from kernex_agent.inbox import NoticeInbox
from kernex_agent.notices import (
    Installed,
    NoticePolicy,
    NoticeRejected,
    Verdict,
    check_notice,
    load_installed,
)
from kernex_agent.reporting import ProgressReporter, utc_now_text
from kernex_agent.self_update import AgentProbe, mark_connected
from kernex_agent.telemetry import system_metrics, system_uptime_s
from kernex_agent.transport import MqttTransport, Network
from kernex_agent.update.download import HttpDownloader, TransferLimits
from kernex_agent.update.health import CommandHealthCheck
from kernex_agent.update.installer import DirectoryInstaller, Installer, UnpackLimits
from kernex_agent.update.machine import TERMINAL, State
from kernex_agent.update.runner import UpdateRunner
from kernex_agent.update.states import AgentStopping, UpdateStates
from kernex_agent.update.store import FileStateStore, UpdateRecord, require_notice
from kernex_protocol.manifest import load_trusted_keys
from kernex_protocol.payloads import (
    ErrorCode,
    Heartbeat,
    Notice,
    PayloadInvalid,
    Presence,
    ProgressError,
    ProgressState,
    UrlRequest,
    UrlResponse,
)
from kernex_protocol.topics import Channel

if TYPE_CHECKING:  # loaded when a notice is verified, not by an idle agent
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("kernex_agent")

# The version of the code that runs: after a self-update that is the committed release's
# code, whatever the installed distribution's metadata says.
AGENT_VERSION = kernex_agent.__version__


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _keys(directory: Path) -> dict[str, "Ed25519PublicKey"]:
    """The Ed25519 keys in `directory`; none when it does not exist (every check then fails)."""
    return load_trusted_keys(directory) if directory.is_dir() else {}


def _certificate_serial(path: Path) -> str | None:
    try:
        return format(serial_number(path.read_bytes()), "x")
    except (OSError, ValueError):
        return None


class Agent:
    """One device's agent."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        faults: FaultInjector | None = None,
        installer: Installer | None = None,
        health_check: Callable[[], bool] | None = None,
        network: Network | None = None,
        config_file: Path | None = None,
    ) -> None:
        """`installer` and `health_check` default to the configured ones; `faults` is called
        with each state entered (the power-cut tests and the simulator). `network` runs the
        MQTT connection in a shared event loop instead of a thread of its own (the simulator's
        thousands of agents per process)."""
        self.config = config
        update = config.update
        update.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.installer: Installer = installer or DirectoryInstaller(
            update.install_root,
            keep_versions=update.keep_versions,
            limits=UnpackLimits(max_bytes=update.max_unpacked_bytes),
        )
        health = health_check or (
            CommandHealthCheck(
                update.health_command, timeout_s=update.health_timeout_s, cwd=update.install_root
            )
            if update.health_command
            else (lambda: True)
        )
        self.store = FileStateStore(update.state_dir / "update.json", check=require_notice)
        self.inbox = NoticeInbox()
        self.transport = MqttTransport(
            config.mqtt,
            config.device_id,
            sessions=PersistentCounter(update.state_dir / "session"),
            birth=self._birth,
            on_message=self._from_network_thread,
            on_connected=self._on_connected,
            network=network,
        )
        self.reporter = ProgressReporter(
            self.transport,
            update.state_dir,
            superseded_by=lambda: self.inbox.current_id,
            connected=self._wait_connected,
        )
        # What this agent sent, for the simulator's reports.
        self.sent = self.reporter.sent
        self.agent_installer: Installer | None = None
        agent_health: Callable[[], bool] | None = None
        if update.agent_root is not None and network is None:
            self.agent_installer = DirectoryInstaller(
                update.agent_root,
                keep_versions=update.keep_versions,
                limits=UnpackLimits(max_bytes=update.max_unpacked_bytes),
            )
            agent_health = AgentProbe(
                agent_root=update.agent_root,
                config_file=config_file,
                transport=self.transport,
                timeout_s=update.agent_probe_timeout_s,
            )
        self.states = UpdateStates(
            update,
            installer=self.installer,
            health_check=health,
            downloader=HttpDownloader(
                timeout_s=update.download_timeout_s,
                rate_limit_bps=update.download_rate_limit_bps,
                limits=TransferLimits(
                    stall_s=update.download_stall_s,
                    min_rate_bps=update.download_min_rate_bps,
                    rate_window_s=update.download_rate_window_s,
                ),
            ),
            reporter=self.reporter,
            deployments=self,
            agent_installer=self.agent_installer,
            agent_health_check=agent_health,
        )
        self.runner = UpdateRunner(
            self.store,
            self.states.handlers(),
            max_saves=update.max_state_saves,
            on_enter=self._on_enter,
            passes_through=(AgentStopping,),
        )
        self._faults = faults
        # Extra heartbeat metrics (the simulator pads heartbeats to a chosen size with these).
        self.extra_metrics: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._url_waiters: dict[str, asyncio.Future[UrlResponse]] = {}
        # When each (deployment, attempt) with a start delay was first heard (monotonic).
        self._delays: dict[tuple[str, int], float] = {}
        self._stopping = False
        self._restart = asyncio.Event()  # a new agent was committed: exit so it can start
        self.malformed_messages = 0

    # --- life cycle ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """Run until `stop` is set; an update in progress is left saved, to resume later.
        False if a task ended on its own (a bug): the caller exits non-zero."""
        self._loop = asyncio.get_running_loop()
        log.info(
            "agent.starting",
            extra={"device_id": self.config.device_id, "agent_version": AGENT_VERSION},
        )
        self.transport.start()
        tasks = [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._updates(), name="updates"),
            asyncio.create_task(self._liveness(), name="liveness"),
        ]
        stopped = asyncio.create_task(stop.wait())
        restart = asyncio.create_task(self._restart.wait())
        await asyncio.wait([stopped, restart, *tasks], return_when=asyncio.FIRST_COMPLETED)
        clean = stop.is_set() or self._restart.is_set()
        self._stopping = True
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError | AgentStopping
            ):
                log.error("agent.task_failed", exc_info=result)
        stopped.cancel()
        restart.cancel()
        await asyncio.to_thread(self.transport.stop)
        log.info("agent.stopped", extra={"clean": clean})
        return clean

    @property
    def restart_requested(self) -> bool:
        """Whether the agent stopped to restart into a newly committed agent."""
        return self._restart.is_set()

    def _on_connected(self) -> None:
        mark_connected(self.config.update.state_dir)

    async def _run_update(self) -> None:
        await self.runner.run()
        if self.states.restart_requested:
            log.info("agent.restarting_into_new_version")
            self._restart.set()

    @property
    def stopping(self) -> bool:
        """Whether the agent is shutting down."""
        return self._stopping

    def _birth(self, session: int) -> Presence:
        return Presence(
            online=True,
            session=session,
            agent_version=AGENT_VERSION,
            installed_version=self.installer.current_version(),
            cert_serial=_certificate_serial(self.config.mqtt.cert_file),
        )

    # --- messages from the broker -------------------------------------------------------

    def _from_network_thread(self, channel: Channel, payload: bytes) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_message, channel, payload)

    def _on_message(self, channel: Channel, payload: bytes) -> None:
        if channel == Channel.DEPLOYMENT:
            self.inbox.receive(payload)
        elif channel == Channel.URL_RESPONSE:
            try:
                response = UrlResponse.parse(payload)
            except PayloadInvalid as exc:
                self._count_malformed(channel, exc)
                return
            waiter = self._url_waiters.pop(response.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(response)

    def _count_malformed(self, channel: Channel, exc: Exception) -> None:
        self.malformed_messages += 1
        log.warning(
            "mqtt.malformed_payload",
            extra={
                "channel": channel.value,
                "reason": str(exc)[:200],
                "count": self.malformed_messages,
            },
        )

    # --- the Deployments protocol used by the update states -------------------------------

    def withdrawn(self, deployment_id: str) -> bool:
        """True once a notice other than this deployment's (or none) was heard since start."""
        return self.inbox.withdrawn(deployment_id)

    async def fresh_url(self, deployment_id: str) -> str | None:
        """Ask over url/request and wait for the matching url/response."""
        if not await self._wait_connected(self.config.update.url_wait_s):
            return None
        request_id = os.urandom(8).hex()  # what secrets.token_hex does, without loading it
        waiter: asyncio.Future[UrlResponse] = asyncio.get_running_loop().create_future()
        self._url_waiters[request_id] = waiter
        self.transport.publish(
            Channel.URL_REQUEST, UrlRequest(request_id, deployment_id).to_payload()
        )
        try:
            response = await asyncio.wait_for(waiter, self.config.update.url_wait_s)
        except TimeoutError:
            log.warning("download.no_url_response", extra={"deployment_id": deployment_id})
            return None
        finally:
            self._url_waiters.pop(request_id, None)
        if response.url is None:
            log.warning(
                "download.url_denied",
                extra={"deployment_id": deployment_id, "reason": response.error},
            )
        return response.url

    async def _wait_connected(self, limit_s: float | None) -> bool:
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while not self.transport.connected.is_set():
            if self._stopping or (deadline is not None and time.monotonic() > deadline):
                return False
            await asyncio.sleep(0.2)
        return True

    # --- the update loop -----------------------------------------------------------------

    async def _on_enter(self, record: UpdateRecord) -> None:
        if self._faults is not None:
            self._faults(record.state)
        if record.state not in TERMINAL:
            self.reporter.progress(record)

    async def _updates(self) -> None:
        await asyncio.to_thread(self.installer.cleanup)
        interrupted = self.runner.resume()  # counts this start if an update was interrupted
        if self.store.damaged is not None:
            await self._recover_from_damaged_record()
        elif interrupted.state != State.IDLE:
            log.info("update.resuming", extra={"state": interrupted.state.value})
            await self._run_update()
        while True:
            await self.inbox.changed.wait()
            self.inbox.changed.clear()
            if not self.inbox.raw:
                continue
            try:
                await self._consider(self.inbox.raw, self.inbox.parsed)
            except (asyncio.CancelledError, AgentStopping):
                raise
            except Exception as exc:
                # One notice must not end the loop that serves every later one.
                log.error("update.notice_error", extra={"error": type(exc).__name__}, exc_info=exc)

    async def _recover_from_damaged_record(self) -> None:
        """The saved update state was unreadable: go on from what the installer says runs,
        undoing an uncommitted install, and tell the backend once about the deployment."""
        damaged = self.store.damaged
        assert damaged is not None
        returned_to = await asyncio.to_thread(self.installer.recover)
        log.error(
            "update.recovered_from_damaged_record",
            extra={
                "reason": damaged.reason,
                "running": self.installer.current_version(),
                "rolled_back_to": returned_to,
            },
        )
        if damaged.deployment_id is not None:
            detail = f"{damaged.reason}; running {self.installer.current_version()}"
            await self.reporter.report_outcome(
                self.reporter.message(
                    damaged.deployment_id,
                    ProgressState.FAILED,
                    error=ProgressError(ErrorCode.STATE_DAMAGED, detail),
                )
            )

    async def _consider(self, raw: bytes, parsed: Notice | PayloadInvalid | None) -> None:
        if not isinstance(parsed, Notice):
            self._count_malformed(Channel.DEPLOYMENT, parsed or PayloadInvalid("empty notice"))
            return
        notice = parsed
        if await self.reporter.repeat_outcome(notice.deployment_id, notice.attempt):
            return  # seen before (a retained notice after a reconnect): outcome said again
        if notice.start_delay_s > 0:
            waited = await self._start_delay(notice)
            if waited is None:
                return  # replaced or withdrawn during the delay: the loop considers the new one
            raw, notice = waited
        try:
            verdict = check_notice(
                notice, self._policy(), installed=self._installed(notice), now=_utc_now()
            )
        except NoticeRejected as exc:
            log.warning(
                "update.notice_rejected",
                extra={"deployment_id": notice.deployment_id, "code": exc.code.value},
            )
            rejected = self.reporter.about(
                notice, ProgressState.REJECTED, error=ProgressError(exc.code, exc.detail)
            )
            await self.reporter.report_outcome(rejected)
            return
        if verdict == Verdict.ALREADY_INSTALLED:
            await self.reporter.report_outcome(
                self.reporter.about(notice, ProgressState.ALREADY_INSTALLED)
            )
            return
        log.info(
            "update.starting",
            extra={"deployment_id": notice.deployment_id, "version": notice.manifest.version},
        )
        self.runner.begin({"id": notice.deployment_id, "notice": raw.decode()})
        await self._run_update()

    async def _start_delay(self, notice: Notice) -> tuple[bytes, Notice] | None:
        """Wait the notice's jitter delay, counted from when this attempt was first heard (a
        re-published copy of the same notice does not restart it). Returns the newest copy
        of the notice, or None if another notice (or none) replaced it meanwhile."""
        key = (notice.deployment_id, notice.attempt)
        first_heard = self._delays.setdefault(key, time.monotonic())
        while True:
            left = first_heard + notice.start_delay_s - time.monotonic()
            if left <= 0:
                break
            log.info(
                "update.start_delay",
                extra={"deployment_id": notice.deployment_id, "seconds": round(left)},
            )
            try:
                await asyncio.wait_for(self.inbox.changed.wait(), left)
            except TimeoutError:
                break
            current = self.inbox.parsed
            if not isinstance(current, Notice) or (current.deployment_id, current.attempt) != key:
                return None  # `changed` stays set: the update loop takes the new payload
            self.inbox.changed.clear()
            notice = current
        self._delays.pop(key, None)
        current, raw = self.inbox.parsed, self.inbox.raw
        if isinstance(current, Notice) and raw and (current.deployment_id, current.attempt) == key:
            return raw, current
        return None

    def _policy(self) -> NoticePolicy:
        """What this device accepts; keys are read each time, so a rotated key on disk counts
        without a restart."""
        update, release = self.config.update, self.config.release
        age = update.max_release_age_days
        products = update.products
        if self.agent_installer is not None and products:
            products = (*products, update.agent_product)
        return NoticePolicy(
            device_id=self.config.device_id,
            device_type=self.config.device_type,
            products=products,
            release_keys=_keys(release.trusted_keys_dir),
            notice_keys=_keys(release.notice_keys_dir),
            max_bundle_bytes=update.max_bundle_bytes,
            max_notice_ttl=dt.timedelta(seconds=update.max_notice_ttl_s),
            max_release_age=dt.timedelta(days=age) if age > 0 else None,
        )

    def _installed(self, notice: Notice) -> Installed | None:
        """What runs: as recorded at the last commit; an install from before that record
        existed is taken to be of the notice's product. The agent's own version is the code
        that runs."""
        if (
            self.agent_installer is not None
            and notice.manifest.name == self.config.update.agent_product
        ):
            return Installed(notice.manifest.name, AGENT_VERSION)
        recorded = load_installed(self.states.installed_path)
        if recorded is not None:
            return recorded
        running = self.installer.current_version()
        return None if running is None else Installed(notice.manifest.name, running)

    # --- liveness and heartbeats -------------------------------------------------------------

    async def _liveness(self) -> None:
        state_dir = self.config.update.state_dir
        while True:
            try:
                liveness.mark(state_dir, connected=self.transport.connected.is_set())
            except OSError as exc:  # a full disk must not stop the agent; the mark goes stale
                log.warning("agent.liveness_unwritable", extra={"error": str(exc)})
            await asyncio.sleep(liveness.PERIOD_S)

    async def _heartbeats(self) -> None:
        telemetry = self.config.telemetry
        interval = telemetry.heartbeat_interval_s
        if telemetry.start_jitter:
            await asyncio.sleep(uniform(0, interval))
        started = time.monotonic()
        seq = 0
        while True:
            if self.transport.connected.is_set():
                metrics = system_metrics(self.config.update.install_root)
                metrics["agent_uptime_s"] = int(time.monotonic() - started)
                metrics.update(self.extra_metrics)
                beat = Heartbeat(
                    seq=seq,
                    session=self.transport.session,
                    sent_at=utc_now_text(),
                    uptime_s=system_uptime_s(),
                    agent_version=AGENT_VERSION,
                    installed_version=self.installer.current_version(),
                    metrics=metrics,
                    update_state=self.runner.state.value,
                    last_error=self.reporter.last_error,
                )
                self.transport.publish(Channel.HEARTBEAT, beat.to_payload())
                self.sent["heartbeat"] += 1
                seq += 1
            await asyncio.sleep(interval)
