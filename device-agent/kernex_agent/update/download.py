"""Downloading a bundle: streamed to disk, resumed with HTTP Range, never past the signed size.

The partial file is the download's only state: its length is the offset to resume from. It is
fsynced every few MiB, so after a power cut the bytes it claims are the bytes it holds (a tail
that was not fsynced can still be wrong; verification catches that and the state machine
fetches again). Presigned URLs are bearer credentials: they are never logged.

A socket timeout bounds each read, not the transfer: a server that sends a byte a second keeps
a read alive for ever. So a watchdog thread watches every transfer and shuts its socket down
(which wakes the blocked read at once) when the agent stops or the notice is withdrawn, when
no byte arrived for `stall_s`, or when fewer than `min_rate_bps` arrived on average over the
last `rate_window_s`. What was received stays in the partial file; the next attempt resumes.
"""

import contextlib
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from kernex_agent.files import is_no_space, write_all

if TYPE_CHECKING:  # loaded by the first download, not by an idle agent (with `email`: 1.6 MiB)
    import http.client

_CHUNK: Final = 64 * 1024
_FSYNC_EVERY: Final = 4 * 1024 * 1024
# Statuses by which a presigned URL says it is no longer (or never was) good: ask for a new one.
_URL_REFUSED: Final = frozenset({401, 403, 404, 410})
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 3


class DownloadError(Exception):
    """A transient failure: the network, the server, a timeout. Retry with backoff."""


class UrlRefused(DownloadError):
    """The URL expired or was refused: a fresh one is needed."""


class NoSpaceForDownload(Exception):
    """The disk the download is written to is full (ENOSPC or the quota): retrying cannot
    help until space is freed, and the partial file holds space the device needs."""


class ContentTooLarge(Exception):
    """The server sends more bytes than the signed manifest's size: permanent."""


class _RangeNotSatisfiable(DownloadError):
    """Our offset is past the object's end: the partial file is not a prefix of it."""


class DownloadCanceled(Exception):
    """The deployment was withdrawn (or the agent is stopping) while downloading."""


@dataclass(frozen=True, slots=True)
class TransferLimits:
    """When a transfer that still moves is given up (and resumed later)."""

    stall_s: float = 60.0  # no byte at all for this long
    min_rate_bps: int = 1024  # average over the window below this
    rate_window_s: float = 120.0
    poll_s: float = 0.5  # how often stop, withdrawal and progress are looked at


class _Watchdog:
    """Cuts a transfer that should end: stop requested, stalled, or too slow."""

    def __init__(self, limits: TransferLimits, should_stop: Callable[[], bool] | None) -> None:
        self._limits = limits
        self._should_stop = should_stop
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.received = 0  # body bytes, updated by the reading thread
        self.reason: str | None = None  # why the watchdog cut the transfer
        self.stopped = False  # the cut was a stop or withdrawal, not a slow server
        self._thread = threading.Thread(target=self._watch, name="download-watchdog", daemon=True)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def watch(self, sock: socket.socket | None) -> None:
        """The socket to shut down when the transfer must end (one per connection)."""
        with self._lock:
            self._sock = sock
            if self.reason is not None:
                self._cut()

    def _cut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # already closed
                self._sock.shutdown(socket.SHUT_RDWR)

    def _trip(self, reason: str, *, stopped: bool = False) -> None:
        with self._lock:
            self.reason, self.stopped = reason, stopped
            self._cut()

    def _watch(self) -> None:
        limits = self._limits
        started = last_change = time.monotonic()
        last_seen = 0
        samples: deque[tuple[float, int]] = deque([(started, 0)])
        while not self._done.wait(limits.poll_s):
            now, received = time.monotonic(), self.received
            if self._should_stop is not None and self._should_stop():
                self._trip("the download was stopped", stopped=True)
                return
            if received != last_seen:
                last_seen, last_change = received, now
            if now - last_change >= limits.stall_s:
                self._trip(f"no data for {limits.stall_s:.0f} s")
                return
            samples.append((now, received))
            while samples and now - samples[0][0] > limits.rate_window_s:
                oldest = samples.popleft()
            if now - started >= limits.rate_window_s:
                rate = (received - oldest[1]) / (now - oldest[0])
                if rate < limits.min_rate_bps:
                    self._trip(f"under {limits.min_rate_bps} B/s for {limits.rate_window_s:.0f} s")
                    return


class HttpDownloader:
    """Fetches one URL into a partial file, resuming from the file's length."""

    def __init__(
        self,
        *,
        timeout_s: float,
        rate_limit_bps: int = 0,
        limits: TransferLimits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.rate_limit_bps = rate_limit_bps
        self.limits = limits or TransferLimits()
        if rate_limit_bps and self.limits.min_rate_bps > rate_limit_bps // 2:
            # Our own cap must not look like a slow server.
            self.limits = TransferLimits(
                self.limits.stall_s, rate_limit_bps // 2, self.limits.rate_window_s
            )
        self._tls = tls

    def _tls_context(self) -> ssl.SSLContext:
        """The given context, or the system's trust store read afresh for this download: held
        by an idle agent, the store costs over 2 MiB, and reading it takes milliseconds."""
        return self._tls if self._tls is not None else ssl.create_default_context()

    def fetch(
        self,
        url: str,
        partial: Path,
        *,
        size: int,
        on_progress: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Continue the download into `partial` until it holds `size` bytes; returns the offset it
        resumed from. Raises UrlRefused, DownloadError, ContentTooLarge or DownloadCanceled."""
        if not url.startswith(("https://", "http://")):
            raise UrlRefused("only http(s) URLs are fetched")
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > size:
            partial.unlink()  # longer than the signed size: it cannot be right
            offset = 0
        if offset == size:
            return offset
        import http.client  # lazily: see the imports

        with _Watchdog(self.limits, should_stop) as watchdog:
            try:
                try:
                    connection, response = self._open(url, offset, watchdog)
                except _RangeNotSatisfiable:
                    partial.unlink(missing_ok=True)  # start over next time
                    raise
                try:
                    return self._receive(response, partial, offset, size, on_progress, watchdog)
                finally:
                    connection.close()
            except (OSError, http.client.HTTPException) as exc:
                if is_no_space(exc):
                    raise NoSpaceForDownload(
                        f"the disk is full ({_reason(exc)}); the partial download was dropped"
                    ) from None
                if watchdog.stopped:
                    raise DownloadCanceled from None
                if watchdog.reason is not None:
                    raise DownloadError(f"the transfer was cut: {watchdog.reason}") from None
                raise DownloadError(f"the transfer broke off: {_reason(exc)}") from None

    def _open(
        self, url: str, offset: int, watchdog: _Watchdog
    ) -> "tuple[http.client.HTTPConnection, http.client.HTTPResponse]":
        """Connect and send the request, following a few redirects to http(s) URLs."""
        import http.client  # lazily: see the imports

        tls: ssl.SSLContext | None = None  # read once per download, and only for https
        secure = url.startswith("https://")
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UrlRefused("only http(s) URLs are fetched")
            if secure and parts.scheme != "https":
                # The bundle's integrity does not need TLS (its digest and signature are
                # checked), but its content and the next URL's signature would travel in clear.
                raise UrlRefused("a redirect from https to plain http is refused")
            connection: http.client.HTTPConnection
            if parts.scheme == "https":
                tls = tls or self._tls_context()
                connection = http.client.HTTPSConnection(
                    parts.hostname, parts.port, timeout=self.timeout_s, context=tls
                )
            else:
                connection = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=self.timeout_s
                )
            try:
                connection.connect()
            except OSError as exc:
                connection.close()
                raise DownloadError(f"cannot reach the download server: {_reason(exc)}") from None
            watchdog.watch(connection.sock)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
            except BaseException:
                connection.close()
                raise
            if response.status in _REDIRECTS and response.getheader("Location"):
                url = urllib.parse.urljoin(url, response.getheader("Location", ""))
                connection.close()
                continue
            if response.status in _URL_REFUSED:
                connection.close()
                raise UrlRefused(f"the server refused the URL (HTTP {response.status})")
            if response.status == 416:
                connection.close()
                raise _RangeNotSatisfiable("HTTP 416")
            if response.status not in (200, 206):
                connection.close()
                raise DownloadError(f"HTTP {response.status}")
            return connection, response
        raise DownloadError(f"more than {_MAX_REDIRECTS} redirects")

    def _pace(self, received: int, started: float, watchdog: _Watchdog) -> None:
        """Sleep until `received` bytes are within the configured rate (in short slices, so a
        stop is still seen)."""
        while watchdog.reason is None:
            ahead = received / self.rate_limit_bps - (time.monotonic() - started)
            if ahead <= 0:
                return
            time.sleep(min(ahead, self.limits.poll_s))

    def _receive(  # noqa: PLR0917 - private, called once
        self,
        response: "http.client.HTTPResponse",
        partial: Path,
        offset: int,
        size: int,
        on_progress: Callable[[int], None] | None,
        watchdog: _Watchdog,
    ) -> int:
        import http.client  # lazily: see the imports

        resumed_from = offset
        if offset and response.status != 206:
            offset = resumed_from = 0  # the server ignored Range: take the whole body
        elif offset and not _content_range_starts_at(response.getheader("Content-Range"), offset):
            raise DownloadError("the server answered a different range than asked")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC)
        fd = os.open(partial, flags, 0o600)
        written, since_sync, started = offset, 0, time.monotonic()
        chunk_size = min(_CHUNK, self.rate_limit_bps or _CHUNK)
        try:
            while written < size:
                # read1: what one receive brings, so progress and the watchdog see every byte.
                chunk = response.read1(min(chunk_size, size - written + 1))
                if not chunk:
                    raise _ended_early(watchdog, written, size)
                if written + len(chunk) > size:
                    raise ContentTooLarge(f"the server sends more than the signed {size} bytes")
                write_all(fd, chunk)
                written += len(chunk)
                watchdog.received = written - offset
                since_sync += len(chunk)
                if since_sync >= _FSYNC_EVERY:
                    os.fsync(fd)
                    since_sync = 0
                if on_progress is not None:
                    on_progress(written)
                if self.rate_limit_bps:
                    self._pace(written - offset, started, watchdog)
            # Exactly `size` bytes: anything more is a content mismatch.
            try:
                extra = response.read1(1)
            except (OSError, http.client.HTTPException):
                extra = b""
            if extra:
                raise ContentTooLarge(f"the server sends more than the signed {size} bytes")
        finally:
            os.fsync(fd)
            os.close(fd)
        return resumed_from


def _ended_early(watchdog: _Watchdog, written: int, size: int) -> Exception:
    """Why a body ended before `size` bytes: the watchdog's cut, or the server's."""
    if watchdog.stopped:
        return DownloadCanceled()
    if watchdog.reason is not None:
        return DownloadError(f"the transfer was cut: {watchdog.reason}")
    return DownloadError(f"the transfer ended early at {written} of {size} bytes")


def _content_range_starts_at(header: str | None, offset: int) -> bool:
    # "bytes 100-199/200"
    if header is None or not header.startswith("bytes "):
        return False
    start, _, _ = header[6:].partition("-")
    return start.strip() == str(offset)


def _reason(exc: BaseException) -> str:
    # A refused certificate says why ("self-signed certificate in certificate chain", "Hostname
    # mismatch"), which its reason (CERTIFICATE_VERIFY_FAILED) does not.
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
    # Never the URL: it is a credential. urllib errors carry only the reason.
    return f"{type(exc).__name__}: {reason}"[:200]
