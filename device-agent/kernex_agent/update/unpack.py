"""Unpacking a bundle archive without ever writing outside the destination.

A signed archive is still input: the release key says who made it, not that it is harmless. So
the unpacker trusts no name in it and no state of the file system it builds:

- every member is written relative to an open directory descriptor, walking its parent folders
  one component at a time with O_NOFOLLOW, so a link made by an earlier member is never followed
  (a member under a link is refused, whatever the link's text says);
- nothing is overwritten: a member whose name exists already is refused;
- a hard link may only point at a regular file this archive wrote itself;
- symbolic links are written as they are and, once every member is out, each one is resolved
  against the real tree; one leading outside refuses the whole archive (the staging folder is
  then removed by the installer, so no link outside the tree ever becomes a version);
- headers are bounded before tarfile reads them (GNU long names and PAX records are read whole
  into memory), and so are the member count, path depth, name lengths and unpacked bytes.

Every refusal is an InstallRefused with a reason the device reports to the backend.
"""

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Final

from kernex_agent.files import is_no_space, write_all

if TYPE_CHECKING:  # loaded by the first install, not by an idle agent
    import tarfile

_CHUNK: Final = 1024 * 1024
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class InstallRefused(Exception):
    """The bundle cannot be installed (hostile or broken archive): a permanent failure."""


class NoSpaceToInstall(InstallRefused):
    """The install root's disk filled up while unpacking (what was unpacked is removed)."""


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """What one archive may hold at most."""

    max_bytes: int = 8 * 1024**3  # every member's size, file data or not
    max_members: int = 100_000
    max_depth: int = 48  # folders in a member's path
    max_path_bytes: int = 1024
    max_component_bytes: int = 255
    max_link_bytes: int = 1024
    max_header_bytes: int = 64 * 1024  # one GNU long-name or PAX header


def _bounded_tarinfo(limit: int) -> "type[tarfile.TarInfo]":
    """A TarInfo whose extended headers are refused before tarfile reads them into memory."""
    import tarfile  # lazily: see the imports

    extended_headers = frozenset(
        {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, b"X"}
    )

    class BoundedTarInfo(tarfile.TarInfo):
        # tarfile reads a GNU long name or a PAX header whole, then builds the next member from
        # it: a few KiB of compressed archive can ask for hundreds of MiB. The size is known
        # from the header block before anything is read, which is where this checks it.
        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type in extended_headers and self.size > limit:
                raise InstallRefused(
                    f"an extended header of {self.size} bytes is over the {limit}-byte limit"
                )
            return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]

    return BoundedTarInfo


def _parts(name: str, limits: UnpackLimits) -> tuple[str, ...]:
    """A member name as checked path components (no "", ".", ".." or absolute paths)."""
    if "\x00" in name:
        raise InstallRefused(f"a member name holds a NUL byte: {name[:80]!r}")
    if name.startswith("/"):
        raise InstallRefused(f"absolute path in archive: {name[:200]!r}")
    if len(name.encode(errors="surrogateescape")) > limits.max_path_bytes:
        raise InstallRefused(f"a member name is over {limits.max_path_bytes} bytes")
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if not parts:
        raise InstallRefused(f"a member has an empty name: {name[:80]!r}")
    if ".." in parts:
        raise InstallRefused(f"path escapes the install directory: {name[:200]!r}")
    if len(parts) > limits.max_depth:
        raise InstallRefused(f"a member is nested deeper than {limits.max_depth} folders")
    for part in parts:
        if len(part.encode(errors="surrogateescape")) > limits.max_component_bytes:
            raise InstallRefused(f"a name is over {limits.max_component_bytes} bytes")
    return parts


class _Tree:
    """The destination, reached only through directory descriptors that follow no link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_fd = os.open(root, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self._root_fd)

    def folder(self, parts: tuple[str, ...], *, create: bool) -> int:
        """An open descriptor of the folder `parts`; refused if any component is not a real
        folder (a symlink, a file). The caller closes it."""
        fd = os.dup(self._root_fd)
        try:
            for part in parts:
                if create:
                    # Made already by an earlier member? The open below checks what it is.
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise InstallRefused(
                            f"{'/'.join(parts)[:200]!r} goes through a link or a file"
                        ) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write_file(self, parts: tuple[str, ...], source: IO[bytes], mode: int) -> None:
        parent = self.folder(parts[:-1], create=True)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            raise InstallRefused(f"{'/'.join(parts)[:200]!r} appears twice") from None
        finally:
            os.close(parent)
        try:
            while chunk := source.read(_CHUNK):
                write_all(fd, chunk)
            os.fchmod(fd, mode)  # not the archive's: no owner, no setuid/setgid/sticky bits
            os.fsync(fd)
        finally:
            os.close(fd)

    def make_folder(self, parts: tuple[str, ...]) -> None:
        os.close(self.folder(parts, create=True))

    def symlink(self, parts: tuple[str, ...], target: str) -> None:
        parent = self.folder(parts[:-1], create=True)
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except FileExistsError:
            raise InstallRefused(f"{'/'.join(parts)[:200]!r} appears twice") from None
        finally:
            os.close(parent)

    def hard_link(self, parts: tuple[str, ...], target: tuple[str, ...]) -> None:
        source = self.folder(target[:-1], create=False)
        try:
            parent = self.folder(parts[:-1], create=True)
            try:
                os.link(
                    target[-1],
                    parts[-1],
                    src_dir_fd=source,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
            except FileExistsError:
                raise InstallRefused(f"{'/'.join(parts)[:200]!r} appears twice") from None
            finally:
                os.close(parent)
        finally:
            os.close(source)


def _check_links_stay_inside(root: Path, links: list[tuple[str, ...]]) -> None:
    """Resolve every symbolic link against the finished tree; refuse one that leaves it."""
    real_root = os.path.realpath(root)
    for parts in links:
        resolved = os.path.realpath(os.path.join(root, *parts))
        if resolved != real_root and not resolved.startswith(real_root + os.sep):
            raise InstallRefused(f"link points outside the install directory: {'/'.join(parts)!r}")


def unpack(archive: Path, destination: Path, *, limits: UnpackLimits) -> None:
    """Unpack a tar(.gz/.bz2/.xz) into `destination`, which must not exist yet; raise
    InstallRefused for anything outside the rules above (the caller removes `destination`)."""
    import tarfile  # lazily: see the imports

    destination.mkdir(parents=True)
    tree = _Tree(destination)
    try:
        _unpack_into(tree, archive, limits)
    except InstallRefused:
        raise
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpaceToInstall(f"the disk is full: {exc.strerror}") from None
        raise InstallRefused(
            f"the archive cannot be unpacked: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    except (tarfile.TarError, EOFError, ValueError, RecursionError, MemoryError) as exc:
        raise InstallRefused(
            f"the archive cannot be unpacked: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    finally:
        tree.close()


def _unpack_into(tree: _Tree, archive: Path, limits: UnpackLimits) -> None:
    import tarfile  # lazily: see the imports

    regular: set[tuple[str, ...]] = set()  # files this archive wrote: the only hard-link targets
    links: list[tuple[str, ...]] = []
    total = 0
    info_class = _bounded_tarinfo(limits.max_header_bytes)
    with tarfile.open(archive, mode="r:*", tarinfo=info_class) as tar:
        for count, member in enumerate(tar, start=1):
            if count > limits.max_members:
                raise InstallRefused(f"the archive holds more than {limits.max_members} members")
            total += max(0, member.size)
            if total > limits.max_bytes:
                raise InstallRefused(f"the archive unpacks to more than {limits.max_bytes} bytes")
            parts = _parts(member.name, limits)
            if member.isdir():
                tree.make_folder(parts)
            elif member.isreg():
                source = tar.extractfile(member)
                if source is None:
                    raise InstallRefused(f"{member.name[:200]!r} has no content")
                with source:
                    tree.write_file(parts, source, 0o755 if member.mode & stat.S_IXUSR else 0o644)
                regular.add(parts)
            elif member.issym():
                _check_link_text(member, parts, limits)
                tree.symlink(parts, member.linkname)
                links.append(parts)
            elif member.islnk():
                target = _parts(member.linkname, limits)
                if target not in regular:
                    raise InstallRefused(
                        f"hard link {member.name[:200]!r} is not to a file of this archive"
                    )
                tree.hard_link(parts, target)
            else:
                raise InstallRefused(
                    "device files, FIFOs and other special files are refused: "
                    f"{member.name[:200]!r}"
                )
            # tarfile keeps every member it has read; the count limit bounds that list too.
    _check_links_stay_inside(tree.root, links)


def _check_link_text(
    member: "tarfile.TarInfo", parts: tuple[str, ...], limits: UnpackLimits
) -> None:
    """Refuse a link text that is absolute or climbs above the tree from where the link sits.

    Checked by its text as well as by resolution: a link that leaves the tree and comes back in
    through the staging folder's own name resolves inside now, and outside once renamed."""
    target = member.linkname
    if not target or "\x00" in target:
        raise InstallRefused(f"link {member.name[:200]!r} has an empty or NUL-holding target")
    if len(target.encode(errors="surrogateescape")) > limits.max_link_bytes:
        raise InstallRefused(f"link {member.name[:200]!r} has a target over the length limit")
    if target.startswith("/"):
        raise InstallRefused(f"link to an absolute path: {member.name[:200]!r} -> {target[:200]!r}")
    depth = len(parts) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise InstallRefused(
                    f"link points outside the install directory: {member.name[:200]!r}"
                )
        elif part not in ("", "."):
            depth += 1
