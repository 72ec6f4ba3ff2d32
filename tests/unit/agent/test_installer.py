"""The directory installer: atomic switches, rollback, commit, and hostile archives refused."""

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from kernex_agent.update.health import CommandHealthCheck
from kernex_agent.update.installer import DirectoryInstaller, InstallRefused, UnpackLimits


def make_bundle(
    path: Path, files: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o4755 if name.endswith(".sh") else 0o644  # setuid must not survive
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_install_switch_rollback_commit(tmp_path: Path) -> None:
    installer = DirectoryInstaller(tmp_path / "app", keep_versions=2)
    v1 = make_bundle(tmp_path / "v1.tgz", {"bin/run.sh": b"#!/bin/sh\necho 1\n", "VERSION": b"1"})
    v2 = make_bundle(tmp_path / "v2.tgz", {"bin/run.sh": b"#!/bin/sh\necho 2\n", "VERSION": b"2"})

    installer.install(v1, "1.0.0")
    installer.commit("1.0.0")
    assert installer.current_version() == "1.0.0"
    assert (installer.current / "VERSION").read_bytes() == b"1"
    mode = (installer.current / "bin/run.sh").stat().st_mode
    assert mode & 0o111 and not mode & 0o4000  # executable, setuid dropped

    installer.install(v2, "2.0.0")
    installer.install(v2, "2.0.0")  # re-run after a crash: no change
    assert installer.current_version() == "2.0.0"
    assert os.readlink(installer.previous) == "versions/1.0.0"

    installer.rollback("2.0.0")
    installer.rollback("2.0.0")  # idempotent
    assert installer.current_version() == "1.0.0"
    assert not (installer.versions / "2.0.0").exists()
    assert not installer.previous.exists()

    installer.install(v2, "2.0.0")
    installer.commit("2.0.0")
    assert installer.current_version() == "2.0.0"
    assert not installer.previous.exists()
    assert {p.name for p in installer.versions.iterdir()} == {"1.0.0", "2.0.0"}
    v3 = make_bundle(tmp_path / "v3.tgz", {"VERSION": b"3"})
    installer.install(v3, "3.0.0")
    installer.commit("3.0.0")
    assert {p.name for p in installer.versions.iterdir()} == {"2.0.0", "3.0.0"}  # keep 2


def test_a_failed_first_install_leaves_nothing_selected(tmp_path: Path) -> None:
    """Nothing ran before, so nothing runs after: not the version that failed its health check
    (which would also count as installed and refuse an older fix as a downgrade)."""
    installer = DirectoryInstaller(tmp_path / "app")
    v1 = make_bundle(tmp_path / "v1.tgz", {"VERSION": b"1"})
    installer.install(v1, "1.0.0")
    assert installer.current_version() == "1.0.0"
    installer.rollback("1.0.0")
    installer.rollback("1.0.0")  # idempotent
    assert installer.current_version() is None
    assert not (installer.versions / "1.0.0").exists()
    assert not installer.previous.exists()
    # An interrupted first install whose record was lost is undone the same way.
    installer.install(v1, "1.0.0")
    assert installer.recover() is None
    assert installer.current_version() is None


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def _file(name: str, size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_file("../escape.txt"), "escapes"),
        (_file("ok/../../escape.txt"), "escapes"),
        (_file("/etc/evil.txt"), "absolute"),
        (_link("etc-link", "/etc/passwd"), "absolute"),
        (_link("up-link", "../../outside"), "outside"),
        (_link("hard", "../../outside", tarfile.LNKTYPE), "outside"),
        (_special("dev/null", tarfile.CHRTYPE), "special"),
        (_special("dev/disk", tarfile.BLKTYPE), "special"),
        (_special("pipe", tarfile.FIFOTYPE), "special"),
    ],
)
def test_hostile_archives_write_nothing_outside(
    tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    installer = DirectoryInstaller(tmp_path / "root" / "app")
    bundle = make_bundle(tmp_path / "evil.tgz", {"VERSION": b"1"}, extra=[member])
    before = everything_under(tmp_path)
    with pytest.raises(InstallRefused, match=why):
        installer.install(bundle, "6.6.6")
    installer.cleanup()
    after = everything_under(tmp_path)
    # Only empty bookkeeping directories may appear; nothing lands outside the staging area.
    assert after - before <= {"root", "root/app", "root/app/versions"}
    assert installer.current_version() is None


def test_archive_bombs_are_refused(tmp_path: Path) -> None:
    installer = DirectoryInstaller(tmp_path / "app", limits=UnpackLimits(max_bytes=1000))
    bundle = make_bundle(tmp_path / "big.tgz", {"a": b"0" * 600, "b": b"0" * 600})
    with pytest.raises(InstallRefused, match="more than 1000 bytes"):
        installer.install(bundle, "1.0.0")


def test_broken_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(InstallRefused, match="cannot be unpacked"):
        DirectoryInstaller(tmp_path / "app").install(tmp_path / "junk.tgz", "1.0.0")


def test_links_inside_the_version_are_fine(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "links.tgz", {"lib/real.txt": b"hi"}, extra=[_link("lib/alias.txt", "real.txt")]
    )
    installer = DirectoryInstaller(tmp_path / "app")
    installer.install(bundle, "1.0.0")
    assert (installer.current / "lib" / "alias.txt").read_bytes() == b"hi"


def test_health_check_command() -> None:
    assert CommandHealthCheck([sys.executable, "-c", "pass"], timeout_s=10)()
    assert not CommandHealthCheck([sys.executable, "-c", "raise SystemExit(3)"], timeout_s=10)()
    assert not CommandHealthCheck(
        [sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.3
    )()
    assert not CommandHealthCheck(["/nonexistent/health"], timeout_s=1)()
