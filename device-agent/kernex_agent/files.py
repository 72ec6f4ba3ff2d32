"""Durable file writes: a power cut leaves either the old content or the new, never half."""

import contextlib
import errno
import os
from pathlib import Path
from typing import Final, NamedTuple

# The errors of a disk (or a quota) with no room left: retrying cannot help until space is freed.
NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` says the disk is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class DiskSpace(NamedTuple):
    free: int
    total: int


def disk_space(path: Path | str) -> DiskSpace:
    """Bytes an unprivileged writer may still use, and the file system's size, at `path`.

    What `shutil.disk_usage` answers, without importing shutil (and the bz2 and lzma modules it
    loads, about half a MiB) into an idle agent."""
    st = os.statvfs(path)
    return DiskSpace(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize)


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to a temporary file, fsync it, rename it over `path`, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # A full disk fails the write; the empty or partial file must not hold on to space.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)
    fsync_directory(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`: os.write may write less than asked (a full disk, a signal)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"write returned {written}")
        view = view[written:]
