"""Downloads end: a server that drips, stalls or never finishes its headers is cut, a stop or a
withdrawn notice ends a blocked read within a second, and what arrived is resumed from.

The servers are real sockets on loopback speaking just enough HTTP/1.1 to misbehave.
"""

import time
from pathlib import Path

import pytest

from kernex_agent.update.download import (
    DownloadCanceled,
    DownloadError,
    HttpDownloader,
    TransferLimits,
)
from tests.unit.agent.loopback_http import (
    BODY,
    Behaviour,
    drip,
    ranged,
    server,
    slow_headers,
    stall_after,
)

FAST_LIMITS = TransferLimits(stall_s=1.0, min_rate_bps=2000, rate_window_s=1.5, poll_s=0.05)


def test_a_dripping_server_is_cut_for_being_too_slow(tmp_path: Path) -> None:
    partial = tmp_path / "b.bundle"
    with server(drip(0.01)) as url:  # about 100 B/s: moving, but far below the floor
        started = time.monotonic()
        with pytest.raises(DownloadError, match="under 2000 B/s"):
            HttpDownloader(timeout_s=30, limits=FAST_LIMITS).fetch(url, partial, size=len(BODY))
        assert time.monotonic() - started < 5
    assert 0 < partial.stat().st_size < len(BODY)  # kept, to resume from


def test_a_stalled_server_is_cut(tmp_path: Path) -> None:
    with server(stall_after(100)) as url:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="no data for 1 s"):
            HttpDownloader(timeout_s=30, limits=FAST_LIMITS).fetch(
                url, tmp_path / "b", size=len(BODY)
            )
        assert time.monotonic() - started < 4
    assert (tmp_path / "b").stat().st_size == 100


def test_headers_that_never_end_are_cut(tmp_path: Path) -> None:
    with server(slow_headers) as url:
        started = time.monotonic()
        with pytest.raises(DownloadError, match="cut"):
            HttpDownloader(timeout_s=30, limits=FAST_LIMITS).fetch(
                url, tmp_path / "b", size=len(BODY)
            )
        assert time.monotonic() - started < 4


@pytest.mark.parametrize("behaviour", [drip(0.01), stall_after(10)], ids=["drip", "stall"])
def test_a_stop_ends_a_blocked_download_within_a_second(
    tmp_path: Path, behaviour: Behaviour
) -> None:
    stop_at = time.monotonic() + 0.5
    patient = TransferLimits(stall_s=60, min_rate_bps=1, rate_window_s=60, poll_s=0.1)
    with server(behaviour) as url:
        with pytest.raises(DownloadCanceled):
            HttpDownloader(timeout_s=60, limits=patient).fetch(
                url,
                tmp_path / "b",
                size=len(BODY),
                should_stop=lambda: time.monotonic() > stop_at,
            )
        assert time.monotonic() - stop_at < 1.0


def test_a_cut_download_resumes_from_its_offset(tmp_path: Path) -> None:
    partial = tmp_path / "b.bundle"
    with server(stall_after(4096)) as url, pytest.raises(DownloadError):
        HttpDownloader(timeout_s=30, limits=FAST_LIMITS).fetch(url, partial, size=len(BODY))
    with server(ranged) as url:
        resumed_from = HttpDownloader(timeout_s=30, limits=FAST_LIMITS).fetch(
            url, partial, size=len(BODY)
        )
    assert resumed_from == 4096
    assert partial.read_bytes() == BODY


def test_our_own_rate_cap_is_not_taken_for_a_slow_server(tmp_path: Path) -> None:
    with server(ranged) as url:
        started = time.monotonic()
        HttpDownloader(timeout_s=30, rate_limit_bps=5000, limits=FAST_LIMITS).fetch(
            url, tmp_path / "b", size=len(BODY)
        )
        took = time.monotonic() - started
    assert (tmp_path / "b").read_bytes() == BODY
    assert 1.5 < took < 5  # 10 KiB at 5,000 B/s, without being cut as "too slow"
