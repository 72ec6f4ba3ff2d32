"""The work of each update state: one small coroutine per state, returning an Event.

Where the machine goes next is decided by machine.py; these handlers only do their state's
work, classify what went wrong, and are safe to run again after a crash (every one of them is
idempotent). Blocking work (HTTP, hashing, unpacking, the health command) runs in threads.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kernex_agent.backoff import Backoff
from kernex_agent.config import UpdateConfig
from kernex_agent.files import disk_space, is_no_space
from kernex_agent.notices import Installed, save_installed
from kernex_agent.update.download import (
    ContentTooLarge,
    DownloadCanceled,
    DownloadError,
    HttpDownloader,
    NoSpaceForDownload,
    UrlRefused,
)
from kernex_agent.update.installer import Installer, InstallRefused
from kernex_agent.update.machine import TERMINAL, Event, State
from kernex_agent.update.runner import Failed, Handler
from kernex_agent.update.store import UpdateRecord
from kernex_agent.update.unpack import NoSpaceToInstall
from kernex_agent.update.verify import BundleMismatch, verify_bundle
from kernex_protocol.payloads import ErrorCode, Notice

PERCENT_REPORT_INTERVAL_S = 2.0  # download percentages: at most one report this often

log = logging.getLogger("kernex_agent.update")


class AgentStopping(Exception):
    """The agent is shutting down: leave the saved state as it is, to resume after restart."""


class Reporter(Protocol):
    """Publishes progress to the backend."""

    def progress(self, record: UpdateRecord, *, percent: int | None = None) -> None:
        """Report the state `record` is in (fire and forget; queued while offline)."""

    async def final(self, record: UpdateRecord) -> bool:
        """Report a terminal state; True once the broker acknowledged it."""


class Deployments(Protocol):
    """What the agent knows about the deployment notices and download URLs."""

    def withdrawn(self, deployment_id: str) -> bool:
        """Whether the backend has cleared or replaced this deployment's notice."""

    @property
    def stopping(self) -> bool:
        """Whether the agent is shutting down."""

    async def fresh_url(self, deployment_id: str) -> str | None:
        """Ask the backend for a new download URL; None if none came."""


@dataclass(frozen=True, slots=True)
class Paths:
    """Where one deployment's download lives."""

    downloads: Path

    def partial(self, deployment_id: str) -> Path:
        """The bundle being downloaded (its length is the resume offset)."""
        return self.downloads / f"{deployment_id}.bundle"

    def resumed_marker(self, deployment_id: str) -> Path:
        """Present when the download was resumed: a verification failure may be a torn tail."""
        return self.downloads / f"{deployment_id}.resumed"

    def discard(self, deployment_id: str) -> None:
        """Remove the download and its marker."""
        self.partial(deployment_id).unlink(missing_ok=True)
        self.resumed_marker(deployment_id).unlink(missing_ok=True)


def notice_of(record: UpdateRecord) -> Notice:
    """The notice the update was started from (verified when it was accepted)."""
    return Notice.parse(record.deployment["notice"].encode())


class UpdateStates:
    """The handlers of every state, with what they need."""

    def __init__(
        self,
        config: UpdateConfig,
        *,
        installer: Installer,
        health_check: Callable[[], bool],
        downloader: HttpDownloader,
        reporter: Reporter,
        deployments: Deployments,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        agent_installer: Installer | None = None,
        agent_health_check: Callable[[], bool] | None = None,
    ) -> None:
        """`agent_installer` and `agent_health_check` serve releases of the agent itself
        (`config.agent_product`; self_update.py); without them such releases are not special."""
        self.config = config
        self.installer = installer
        self.health_check = health_check
        self.agent_installer = agent_installer
        self.agent_health_check = agent_health_check
        # Set when a new agent was committed and reported: the agent should restart into it.
        self.restart_requested = False
        self.downloader = downloader
        self.reporter = reporter
        self.deployments = deployments
        self.paths = Paths(config.state_dir / "downloads")
        self.installed_path = config.state_dir / "installed.json"
        self._sleep = sleep
        self._urls: dict[str, str] = {}
        self._without_url: set[str] = set()  # deployments whose last URL request went unanswered

    def handlers(self) -> Mapping[State, Handler]:
        """The handler of every state but IDLE."""
        table: dict[State, Handler] = {
            State.DOWNLOADING: self.downloading,
            State.VERIFYING: self.verifying,
            State.INSTALLING: self.installing,
            State.HEALTH_CHECK: self.health_checking,
            State.COMMITTING: self.committing,
            State.ROLLING_BACK: self.rolling_back,
        }
        for state in TERMINAL:
            table[state] = self.finished
        return table

    def _is_agent(self, notice: Notice) -> bool:
        return (
            self.agent_installer is not None and notice.manifest.name == self.config.agent_product
        )

    def _installer_for(self, notice: Notice) -> Installer:
        if self._is_agent(notice):
            assert self.agent_installer is not None
            return self.agent_installer
        return self.installer

    def _check_stopping(self) -> None:
        if self.deployments.stopping:
            raise AgentStopping

    async def _retry_later(self, record: UpdateRecord) -> None:
        backoff = Backoff(self.config.retry_min_s, self.config.retry_max_s)
        backoff.failures = max(0, record.attempt - 1)
        await self._sleep(backoff.next_delay())
        self._check_stopping()

    # --- before anything on the device changes -------------------------------------------

    async def downloading(self, record: UpdateRecord) -> Event | Failed:
        """Fetch the bundle, resuming a partial download; ask for a new URL when refused."""
        self._check_stopping()
        notice = notice_of(record)
        if self.deployments.withdrawn(notice.deployment_id):
            return Event.ABORTED
        if record.attempt > self.config.download_attempts:
            tries = record.attempt - 1
            if notice.deployment_id in self._without_url:
                return Failed(ErrorCode.URL_UNAVAILABLE, f"no download URL after {tries} attempts")
            return Failed(ErrorCode.DOWNLOAD_FAILED, f"gave up after {tries} attempts")
        self.paths.downloads.mkdir(parents=True, exist_ok=True)
        partial = self.paths.partial(notice.deployment_id)
        have = partial.stat().st_size if partial.exists() else 0
        needed = max(0, notice.manifest.size - have) + self.config.reserve_bytes
        free = disk_space(self.paths.downloads).free
        if free < needed:
            return Failed(ErrorCode.DISK_FULL, f"{free} bytes free, {needed} needed")
        url = self._urls.get(notice.deployment_id) or notice.url
        if url is None:
            url = await self.deployments.fresh_url(notice.deployment_id)
        if url is None:
            self._without_url.add(notice.deployment_id)
            await self._retry_later(record)
            return Event.RETRY
        self._without_url.discard(notice.deployment_id)
        self._urls[notice.deployment_id] = url
        return await self._fetch(record, notice, url)

    async def _fetch(self, record: UpdateRecord, notice: Notice, url: str) -> Event | Failed:
        deployment_id, size = notice.deployment_id, notice.manifest.size
        last_reported, last_at = -1, 0.0

        def on_progress(done: int) -> None:
            nonlocal last_reported, last_at
            percent = done * 100 // size if size else 100
            now = time.monotonic()
            finished = done == size and percent != last_reported
            # Steps of 10 %, at most one per interval (and always the end): a slow link still
            # shows movement, while a fleet downloading a small bundle in a second does not
            # send its backend eleven reports per device.
            if finished or (
                percent >= last_reported + 10 and now - last_at >= PERCENT_REPORT_INTERVAL_S
            ):
                last_reported, last_at = percent, now
                self.reporter.progress(record, percent=percent)

        def should_stop() -> bool:
            return self.deployments.stopping or self.deployments.withdrawn(deployment_id)

        context = {"deployment_id": deployment_id, "attempt": record.attempt}
        try:
            resumed_from = await asyncio.to_thread(
                self.downloader.fetch,
                url,
                self.paths.partial(deployment_id),
                size=size,
                on_progress=on_progress,
                should_stop=should_stop,
            )
        except DownloadCanceled:
            self._check_stopping()
            return Event.ABORTED
        except (ContentTooLarge, NoSpaceForDownload) as exc:
            # Permanent: give the space back at once. On a full disk the device needs it more
            # than a resume does, and the agent's own state must still be saved there.
            self.paths.discard(deployment_id)
            full = isinstance(exc, NoSpaceForDownload)
            return Failed(ErrorCode.DISK_FULL if full else ErrorCode.SIZE_MISMATCH, str(exc))
        except UrlRefused as exc:
            log.info("download.url_refused", extra={**context, "reason": str(exc)})
            self._urls.pop(deployment_id, None)
            fresh = await self.deployments.fresh_url(deployment_id)
            if fresh is not None:
                self._urls[deployment_id] = fresh
                return Event.RETRY  # straight away: the new URL is good now
            self._without_url.add(deployment_id)
            await self._retry_later(record)
            return Event.RETRY
        except DownloadError as exc:
            log.warning("download.interrupted", extra={**context, "reason": str(exc)})
            await self._retry_later(record)
            return Event.RETRY
        if resumed_from:
            self.paths.resumed_marker(deployment_id).touch()
            log.info("download.resumed", extra={**context, "offset": resumed_from})
        log.info("download.complete", extra={**context, "bytes": size})
        return Event.SUCCESS

    async def verifying(self, record: UpdateRecord) -> Event | Failed:
        """Size and sha256 against the signed manifest, before anything is unpacked."""
        self._check_stopping()
        notice = notice_of(record)
        deployment_id = notice.deployment_id
        if self.deployments.withdrawn(deployment_id):
            return Event.ABORTED
        try:
            await asyncio.to_thread(
                verify_bundle, self.paths.partial(deployment_id), notice.manifest
            )
        except FileNotFoundError:
            return Event.RETRY  # lost (a crash between discard and transition): fetch again
        except BundleMismatch as exc:
            resumed = self.paths.resumed_marker(deployment_id).exists()
            self.paths.discard(deployment_id)
            if resumed:
                # A resumed file may hold a tail that a power cut left unwritten: one fresh
                # download from zero settles whether the content itself is wrong.
                log.warning("verify.resumed_file_mismatch", extra={"deployment_id": deployment_id})
                return Event.RETRY
            return Failed(exc.code, str(exc))
        return Event.SUCCESS

    # --- changing the device: from here on, trouble means rollback -----------------------

    async def installing(self, record: UpdateRecord) -> Event | Failed:
        """Unpack into a new version directory and switch `current` to it."""
        self._check_stopping()
        notice = notice_of(record)
        installer = self._installer_for(notice)
        bundle = self.paths.partial(notice.deployment_id)
        if not bundle.exists() and installer.current_version() == notice.manifest.version:
            return Event.SUCCESS  # switched before a crash, download already cleaned
        try:
            await asyncio.to_thread(installer.install, bundle, notice.manifest.version)
        except NoSpaceToInstall as exc:
            return Failed(ErrorCode.DISK_FULL, str(exc))
        except InstallRefused as exc:
            return Failed(ErrorCode.INSTALL_FAILED, str(exc))
        except OSError as exc:
            log.warning("install.retry", extra={"reason": f"{type(exc).__name__}: {exc}"[:200]})
            await self._retry_later(record)
            return Event.RETRY
        return Event.SUCCESS

    async def health_checking(self, record: UpdateRecord) -> Event | Failed:
        """Run the configured health command against the new version; for a new agent, prove
        that it starts and connects."""
        self._check_stopping()
        if self._is_agent(notice_of(record)):
            assert self.agent_health_check is not None
            if not await asyncio.to_thread(self.agent_health_check):
                return Failed(ErrorCode.HEALTH_CHECK_FAILED, "the new agent did not connect")
            return Event.SUCCESS
        healthy = await asyncio.to_thread(self.health_check)
        if not healthy:
            return Failed(ErrorCode.HEALTH_CHECK_FAILED, "the health command failed or timed out")
        return Event.SUCCESS

    async def committing(self, record: UpdateRecord) -> Event | Failed:
        """Keep the new version; drop the way back and versions beyond the retention; record
        which product and version now run (versions are ordered per product; the agent's own
        version is the code that runs)."""
        notice = notice_of(record)
        installer = self._installer_for(notice)
        event = await self._settle(record, installer.commit, ErrorCode.COMMIT_FAILED)
        if event == Event.SUCCESS and not self._is_agent(notice):
            manifest = notice.manifest
            try:
                save_installed(self.installed_path, Installed(manifest.name, manifest.version))
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                # The new version is committed and runs; the record only orders versions for
                # the downgrade check, and the next commit with room writes it.
                log.warning("update.installed_unsaved", extra={"error": str(exc)})
        return event

    async def rolling_back(self, record: UpdateRecord) -> Event | Failed:
        """Return to the version that ran before."""
        installer = self._installer_for(notice_of(record))
        return await self._settle(record, installer.rollback, ErrorCode.ROLLBACK_FAILED)

    async def _settle(
        self, record: UpdateRecord, action: Callable[[str], None], code: ErrorCode
    ) -> Event | Failed:
        """Commit or roll back the notice's version, then drop its download."""
        notice = notice_of(record)
        try:
            await asyncio.to_thread(action, notice.manifest.version)
        except OSError as exc:
            return Failed(code, f"{type(exc).__name__}: {exc}"[:200])
        self.paths.discard(notice.deployment_id)
        return Event.SUCCESS

    # --- every path ends here ---------------------------------------------------------------

    async def finished(self, record: UpdateRecord) -> Event | Failed:
        """Report the outcome until the broker acknowledges it, then return to IDLE."""
        notice = notice_of(record)
        if record.state in (State.FAILED, State.CANCELED):
            self.paths.discard(notice.deployment_id)
        # A retry of this deployment is a new attempt: it starts from its own notice's URL.
        self._urls.pop(notice.deployment_id, None)
        self._without_url.discard(notice.deployment_id)
        await asyncio.to_thread(self.installer.cleanup)
        if self.agent_installer is not None:
            await asyncio.to_thread(self.agent_installer.cleanup)
        if await self.reporter.final(record):
            if record.state == State.COMMITTED and self._is_agent(notice):
                self.restart_requested = True  # also after a crash between commit and here
            return Event.SUCCESS
        self._check_stopping()
        await self._retry_later(record)
        return Event.RETRY
