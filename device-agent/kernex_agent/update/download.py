"""Downloading a bundle: streamed to disk, resumed with HTTP Range, never past the signed size.

The partial file is the download's only state: its length is the offset to resume from. It is
fsynced every few MiB, so after a power cut the bytes it claims are the bytes it holds (a tail
that was not fsynced can still be wrong; verification catches that and the state machine
fetches again). Presigned URLs are bearer credentials: they are never logged.
"""

import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final

_CHUNK: Final = 64 * 1024
_FSYNC_EVERY: Final = 4 * 1024 * 1024
# Statuses by which a presigned URL says it is no longer (or never was) good: ask for a new one.
_URL_REFUSED: Final = frozenset({401, 403, 404, 410})


class DownloadError(Exception):
    """A transient failure: the network, the server, a timeout. Retry with backoff."""


class UrlRefused(DownloadError):
    """The URL expired or was refused: a fresh one is needed."""


class ContentTooLarge(Exception):
    """The server sends more bytes than the signed manifest's size: permanent."""


class DownloadCanceled(Exception):
    """The deployment was withdrawn while downloading."""


class _NoRedirectToOtherScheme(urllib.request.HTTPRedirectHandler):
    # The stdlib's signature, overridden as is.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]  # noqa: PLR0917
        if not newurl.startswith(("https://", "http://")):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpDownloader:
    """Fetches one URL into a partial file, resuming from the file's length."""

    def __init__(self, *, timeout_s: float, rate_limit_bps: int = 0) -> None:
        self.timeout_s = timeout_s
        self.rate_limit_bps = rate_limit_bps
        self._opener = urllib.request.build_opener(_NoRedirectToOtherScheme())

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
        request = urllib.request.Request(url)  # noqa: S310 - scheme checked above
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in _URL_REFUSED:
                raise UrlRefused(f"the server refused the URL (HTTP {exc.code})") from None
            if exc.code == 416:
                partial.unlink(missing_ok=True)  # our offset is past the object: start over
            raise DownloadError(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"cannot reach the download server: {_reason(exc)}") from None
        with response:
            resumed_from = offset
            if offset and response.status != 206:
                offset = resumed_from = 0  # the server ignored Range: take the whole body
            elif offset and not _content_range_starts_at(
                response.headers.get("Content-Range"), offset
            ):
                raise DownloadError("the server answered a different range than asked")
            self._stream(response, partial, offset, size, on_progress, should_stop)
        return resumed_from

    def _stream(  # noqa: PLR0917 - private, called once
        self,
        response: http.client.HTTPResponse,
        partial: Path,
        offset: int,
        size: int,
        on_progress: Callable[[int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC)
        fd = os.open(partial, flags, 0o600)
        written, since_sync, started = offset, 0, time.monotonic()
        try:
            while written < size:
                if should_stop is not None and should_stop():
                    raise DownloadCanceled
                try:
                    chunk = response.read(min(_CHUNK, size - written + 1))
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(f"the transfer broke off: {_reason(exc)}") from None
                if not chunk:
                    raise DownloadError(f"the transfer ended early at {written} of {size} bytes")
                if written + len(chunk) > size:
                    raise ContentTooLarge(f"the server sends more than the signed {size} bytes")
                os.write(fd, chunk)
                written += len(chunk)
                since_sync += len(chunk)
                if since_sync >= _FSYNC_EVERY:
                    os.fsync(fd)
                    since_sync = 0
                if on_progress is not None:
                    on_progress(written)
                if self.rate_limit_bps:
                    ahead = (written - offset) / self.rate_limit_bps - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            # Exactly `size` bytes: anything more is a content mismatch.
            try:
                extra = response.read(1)
            except (OSError, http.client.HTTPException):
                extra = b""
            if extra:
                raise ContentTooLarge(f"the server sends more than the signed {size} bytes")
        finally:
            os.fsync(fd)
            os.close(fd)


def _content_range_starts_at(header: str | None, offset: int) -> bool:
    # "bytes 100-199/200"
    if header is None or not header.startswith("bytes "):
        return False
    start, _, _ = header[6:].partition("-")
    return start.strip() == str(offset)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    # Never the URL: it is a credential. urllib errors carry only the reason.
    return f"{type(exc).__name__}: {reason}"[:200]
