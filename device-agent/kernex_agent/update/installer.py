"""Installers: how a verified bundle becomes the running version, and how it is undone.

The default installer keeps versions side by side and selects one with a symlink:

    <root>/versions/<version>/   each installed version, unpacked
    <root>/current  -> versions/<version>     what runs
    <root>/previous -> versions/<version>     what to return to, until the update is committed

Switching `current` is one rename of a new symlink over the old one, which is atomic: after a
power cut the device runs either the old version or the new one, complete. Every method is
idempotent, because after a crash the state machine runs the interrupted state again.
"""

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from kernex_agent.files import fsync_directory

_CHUNK = 1024 * 1024


class InstallRefused(Exception):
    """The bundle cannot be installed (hostile or broken archive): a permanent failure."""


class Installer(Protocol):
    """What the update state machine needs from an installer (script hooks, A/B partitions...)."""

    def install(self, bundle: Path, version: str) -> None:
        """Make `version` from `bundle` the one that runs, remembering the one it replaces."""

    def rollback(self, version: str) -> None:
        """Return to the version that ran before `version` was installed."""

    def commit(self, version: str) -> None:
        """Keep `version`: forget the way back and remove versions beyond the retention."""

    def cleanup(self) -> None:
        """Remove leftovers of interrupted installs."""

    def current_version(self) -> str | None:
        """The version that runs now."""


def _check_member(member: tarfile.TarInfo, destination: Path) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if member.name.startswith("/") or name.is_absolute():
        raise InstallRefused(f"absolute path in archive: {member.name!r}")
    if any(part == ".." for part in name.parts) or not name.parts:
        raise InstallRefused(f"path escapes the install directory: {member.name!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise InstallRefused(
            f"device files, FIFOs and other special files are refused: {member.name!r}"
        )
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or member.linkname.startswith("/"):
            raise InstallRefused(
                f"link to an absolute path: {member.name!r} -> {member.linkname!r}"
            )
        base = name.parent if member.issym() else PurePosixPath()
        resolved = os.path.normpath(str(destination / base / target))
        if not (resolved == str(destination) or resolved.startswith(str(destination) + os.sep)):
            raise InstallRefused(f"link points outside the install directory: {member.name!r}")
    return name


def unpack(archive: Path, destination: Path, *, max_bytes: int) -> None:
    """Unpack a tar(.gz) into `destination` (which must not exist), refusing absolute paths,
    `..`, links leading outside, special files, and more than `max_bytes` of content."""
    destination.mkdir(parents=True)
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                name = _check_member(member, destination)
                path = destination / name
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, path)
                    continue
                if member.islnk():
                    os.link(destination / member.linkname, path)
                    continue
                total += member.size
                if total > max_bytes:
                    raise InstallRefused(f"the archive unpacks to more than {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None
                # Our own write: no owner, no setuid/setgid/sticky bits from the archive.
                mode = 0o755 if member.mode & stat.S_IXUSR else 0o644
                with source, open(path, "xb") as target:
                    shutil.copyfileobj(source, target, _CHUNK)
                    target.flush()
                    os.fsync(target.fileno())
                os.chmod(path, mode)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InstallRefused(f"the archive cannot be unpacked: {exc}") from None


def _point(link: Path, target: str) -> None:
    """Make `link` point at `target` atomically (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_directory(link.parent)


class DirectoryInstaller:
    """Versions side by side under `root`, selected by the `current` symlink."""

    def __init__(
        self, root: Path, *, keep_versions: int = 2, max_unpacked_bytes: int = 8 * 1024**3
    ):
        self.root = root
        self.versions = root / "versions"
        self.current = root / "current"
        self.previous = root / "previous"
        self.keep_versions = keep_versions
        self.max_unpacked_bytes = max_unpacked_bytes

    def _target(self, link: Path) -> str | None:
        try:
            return PurePosixPath(os.readlink(link)).name
        except FileNotFoundError:
            return None

    def current_version(self) -> str | None:
        return self._target(self.current)

    def install(self, bundle: Path, version: str) -> None:
        if not version or "/" in version or version in (".", ".."):
            raise InstallRefused(f"unusable version name {version!r}")
        self.versions.mkdir(parents=True, exist_ok=True)
        final = self.versions / version
        running = self.current_version()
        if running == version:
            return  # switched already (the state is being re-run after a crash)
        if not final.is_dir():
            staging = self.versions / f".{version}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            unpack(bundle, staging, max_bytes=self.max_unpacked_bytes)
            os.replace(staging, final)
            fsync_directory(self.versions)
        if running is not None:
            _point(self.previous, f"versions/{running}")
        _point(self.current, f"versions/{version}")

    def rollback(self, version: str) -> None:
        before = self._target(self.previous)
        if before is not None and self.current_version() == version:
            _point(self.current, f"versions/{before}")
        if self.current_version() != version:
            shutil.rmtree(self.versions / version, ignore_errors=True)
        self.previous.unlink(missing_ok=True)

    def commit(self, version: str) -> None:
        self.previous.unlink(missing_ok=True)
        fsync_directory(self.root)
        installed = sorted(
            (p for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        keep = {version}
        for path in installed:
            if len(keep) >= self.keep_versions:
                break
            keep.add(path.name)
        for path in installed:
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def cleanup(self) -> None:
        if self.versions.is_dir():
            for leftover in self.versions.glob(".*.staging"):
                shutil.rmtree(leftover, ignore_errors=True)
