"""Installers: how a verified bundle becomes the running version, and how it is undone.

The default installer keeps versions side by side and selects one with a symlink:

    <root>/versions/<version>/   each installed version, unpacked
    <root>/current  -> versions/<version>     what runs
    <root>/previous -> versions/<version>     what to return to, until the update is committed

Switching `current` is one rename of a new symlink over the old one, which is atomic: after a
power cut the device runs either the old version or the new one, complete. Every method is
idempotent, because after a crash the state machine runs the interrupted state again.
"""

import logging
import os
import subprocess
from pathlib import Path, PurePosixPath
from typing import Protocol

from kernex_agent.files import fsync_directory
from kernex_agent.update.unpack import InstallRefused, UnpackLimits, unpack

__all__ = ["DirectoryInstaller", "InstallRefused", "Installer", "UnpackLimits", "remove_tree"]

log = logging.getLogger("kernex_agent.update")


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

    def recover(self) -> str | None:
        """Return to the last committed version if an update was left uncommitted and its
        record is lost; the version returned to, or None when there was nothing to undo."""


def remove_tree(path: Path) -> bool:
    """Remove `path` and everything under it; False (logged) if anything is left behind.

    Never raises: a version folder that cannot be removed wastes space but must not stop a
    rollback or a commit, since the `current` link already says what runs."""
    if not path.exists() and not path.is_symlink():
        return True
    import shutil  # lazily: an idle agent does without it (and the bz2 and lzma it loads)

    try:
        shutil.rmtree(path)
    except RecursionError:
        # A tree deeper than the interpreter's stack (written by the running app itself):
        # rm walks it without recursion.
        subprocess.run(  # noqa: S603 - fixed argv, a path we own
            ["rm", "-rf", "--one-file-system", "--", str(path)],  # noqa: S607
            check=False,
            capture_output=True,
            timeout=600,
        )
    except OSError as exc:
        log.warning("install.remove_failed", extra={"path": str(path), "reason": str(exc)[:200]})
    if path.exists() or path.is_symlink():
        log.error("install.cleanup_incomplete", extra={"path": str(path)})
        return False
    return True


def _point(link: Path, target: str) -> None:
    """Make `link` point at `target` atomically (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_directory(link.parent)


# What `previous` points to when nothing was installed before (no version starts with a dot).
NOTHING = ".nothing"


class DirectoryInstaller:
    """Versions side by side under `root`, selected by the `current` symlink."""

    def __init__(self, root: Path, *, keep_versions: int = 2, limits: UnpackLimits | None = None):
        self.root = root
        self.versions = root / "versions"
        self.current = root / "current"
        self.previous = root / "previous"
        self.keep_versions = keep_versions
        self.limits = limits or UnpackLimits()

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
            remove_tree(staging)
            try:
                unpack(bundle, staging, limits=self.limits)
            except InstallRefused:
                remove_tree(staging)  # nothing of a refused archive stays on the device
                raise
            os.replace(staging, final)
            fsync_directory(self.versions)
        # `previous` names the way back; on a first install that is "nothing installed".
        _point(self.previous, f"versions/{running if running is not None else NOTHING}")
        _point(self.current, f"versions/{version}")

    def rollback(self, version: str) -> None:
        before = self._target(self.previous)
        if before == NOTHING and self.current_version() == version:
            # A first install that failed: back to nothing selected, not the failed version
            # (which would also pass for the running one and refuse an older fix as a downgrade).
            self.current.unlink()
            fsync_directory(self.root)
        elif before is not None and self.current_version() == version:
            _point(self.current, f"versions/{before}")
        self.previous.unlink(missing_ok=True)
        if self.current_version() != version:
            remove_tree(self.versions / version)  # the device runs `before` whatever this says

    def recover(self) -> str | None:
        running, before = self.current_version(), self._target(self.previous)
        if before is None or running is None:
            return None
        self.rollback(running)
        return None if before == NOTHING else before

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
                remove_tree(path)

    def cleanup(self) -> None:
        if self.versions.is_dir():
            for leftover in self.versions.glob(".*.staging"):
                remove_tree(leftover)
