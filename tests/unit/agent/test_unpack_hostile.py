"""Archives built to escape the install tree, exhaust memory or crash the unpacker.

Every case runs the real DirectoryInstaller into a root that sits beside a sentinel folder, and
checks the same three things: the archive is refused with an InstallRefused (no other exception),
nothing outside the install root changed, and no version was selected.
"""

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernex_agent.update.installer import DirectoryInstaller, InstallRefused, UnpackLimits
from kernex_agent.update.unpack import unpack


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info


def _folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def _file(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


Member = tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]


def build(path: Path, members: list[Member], *, fmt: int = tarfile.GNU_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for member in members:
            if isinstance(member, tuple):
                info, data = member
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(member)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under `root` (links not followed): mode, size, link text."""
    seen: dict[str, tuple[int, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st_ = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            seen[os.path.relpath(path, root)] = (st_.st_mode, st_.st_size, link)
    return seen


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A sentinel tree around the install root: a hostile archive must leave it untouched."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_bytes(b"mine")
    (tmp_path / "root").mkdir()
    return tmp_path


def assert_refused(world: Path, members: list[Member], match: str, **kwargs: object) -> None:
    bundle = build(world / "evil.tgz", members, **kwargs)  # type: ignore[arg-type]
    installer = DirectoryInstaller(world / "root" / "app")
    before = {k: v for k, v in snapshot(world).items() if not k.startswith("root")}
    with pytest.raises(InstallRefused, match=match):
        installer.install(bundle, "6.6.6")
    after = {k: v for k, v in snapshot(world).items() if not k.startswith("root")}
    assert after == before, "the archive changed something outside the install root"
    assert installer.current_version() is None
    # The refused archive's staging folder is gone: nothing of it stays on the device.
    assert not list((world / "root" / "app" / "versions").glob(".*"))


# --- links: a chain of individually harmless links must not lead anywhere -------------------

LINK_CHAINS = {
    "file under a link to the root": [_symlink("l1", "."), _file("l1/x")],
    "file through a link made inside a link": [
        _folder("d"),
        _symlink("d/up", ".."),
        _file("d/up/x"),
    ],
    "link to a link's parent, then a file": [
        _folder("sub"),
        _symlink("sub/up", ".."),
        _symlink("esc", "sub/up/.."),
    ],
    "two-step climb": [
        _folder("a"),
        _folder("a/b"),
        _symlink("a/b/c", "../.."),
        _symlink("a/d", "b/c/.."),
    ],
    "climb out and back in by the staging folder's name": [
        _symlink("back", "../.6.6.6.staging/x"),
    ],
    "folder member over an earlier link": [
        _symlink("s", "."),
        _folder("s"),
        _file("s/x"),
    ],
    "hard link placed through a link": [
        _file("f"),
        _symlink("via", "."),
        _hardlink("via/h", "f"),
    ],
    "hard link whose target goes through a link": [
        _folder("d"),
        _file("d/f"),
        _symlink("e", "d"),
        _hardlink("g", "e/f"),
    ],
}


@pytest.mark.parametrize("members", LINK_CHAINS.values(), ids=LINK_CHAINS.keys())
def test_link_chains_are_refused(world: Path, members: list[Member]) -> None:
    assert_refused(world, members, "link|outside|escapes")


def test_a_link_to_outside_is_refused_even_when_nothing_uses_it(world: Path) -> None:
    target = os.path.relpath(world / "outside", world / "root" / "app" / "versions" / "x")
    assert_refused(world, [_symlink("x", target)], "outside")


@pytest.mark.parametrize(
    "members",
    [
        [_hardlink("h", "/etc/passwd")],
        [_hardlink("h", "../../outside/keep.txt")],
        [_hardlink("h", "never-written")],
        [_folder("d"), _hardlink("h", "d")],  # to a folder
        [_symlink("s", "x"), _hardlink("h", "s")],  # to a link, not a file
    ],
    ids=["absolute", "climbing", "missing", "folder", "symlink"],
)
def test_hard_links_only_to_files_of_this_archive(world: Path, members: list[Member]) -> None:
    assert_refused(world, members, "hard link|escapes|absolute")


@pytest.mark.parametrize(
    "members",
    [
        [_file("x"), _file("x", b"again")],
        [_symlink("x", "y"), _file("x")],
        [_file("x"), _symlink("x", "y")],
        [_file("f"), _file("x"), _hardlink("x", "f")],
    ],
    ids=["file-file", "link-file", "file-link", "file-hardlink"],
)
def test_nothing_is_overwritten(world: Path, members: list[Member]) -> None:
    assert_refused(world, members, "appears twice")


# --- sizes: headers, member counts, depth, names ---------------------------------------------


def test_a_huge_gnu_long_name_is_refused_before_it_is_read(world: Path) -> None:
    # 2 MiB of name compresses to a few KiB; tarfile would read it whole.
    name = "a/" * (1024 * 1024)
    assert_refused(world, [_file(name + "x")], "extended header")


def test_a_huge_pax_header_is_refused_before_it_is_read(world: Path) -> None:
    info, data = _file("x")
    info.pax_headers = {"comment": "z" * (1024 * 1024)}
    assert_refused(world, [(info, data)], "extended header", fmt=tarfile.PAX_FORMAT)


def test_a_nul_byte_in_a_pax_path_is_refused(world: Path) -> None:
    info, data = _file("x")
    info.pax_headers = {"path": "ok\x00/../../outside/x"}
    assert_refused(world, [(info, data)], "NUL|cannot be unpacked", fmt=tarfile.PAX_FORMAT)


def test_deep_trees_are_refused(world: Path) -> None:
    assert_refused(world, [_file("d/" * 60 + "x")], "deeper")


def test_long_names_are_refused(world: Path) -> None:
    assert_refused(world, [_file("n" * 300)], "over 255 bytes")


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    bundle = build(tmp_path / "many.tgz", [_file(f"f{i}", b"") for i in range(11)])
    with pytest.raises(InstallRefused, match="more than 10 members"):
        unpack(bundle, tmp_path / "out", limits=UnpackLimits(max_members=10))


def test_sizes_of_every_member_count_towards_the_limit(tmp_path: Path) -> None:
    # A folder that claims a size still makes tarfile skip (and decompress) that many bytes.
    folder = _folder("d")
    folder.size = 5000
    bundle = build(tmp_path / "claims.tgz", [folder])
    with pytest.raises(InstallRefused, match="more than 1000 bytes"):
        unpack(bundle, tmp_path / "out", limits=UnpackLimits(max_bytes=1000))


def test_a_legitimate_bundle_with_links_installs(tmp_path: Path) -> None:
    bundle = build(
        tmp_path / "ok.tgz",
        [
            _folder("lib"),
            _file("lib/libapp.so.1", b"elf"),
            _symlink("lib/libapp.so", "libapp.so.1"),
            _folder("bin"),
            _symlink("bin/lib", "../lib"),
            _hardlink("bin/app", "lib/libapp.so.1"),
            _file("./VERSION", b"1"),
        ],
    )
    installer = DirectoryInstaller(tmp_path / "app")
    installer.install(bundle, "1.0.0")
    assert (installer.current / "bin/lib/libapp.so").read_bytes() == b"elf"
    assert os.stat(installer.current / "bin/app").st_nlink == 2


# --- the property: whatever the archive, nothing outside changes, only refusals escape -------

_COMPONENTS = st.sampled_from(["a", "b", "c", "..", ".", "", "/"])
_NAMES = st.lists(_COMPONENTS, min_size=1, max_size=5).map("/".join)
_MEMBERS = st.lists(
    st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink"]), _NAMES, _NAMES),
    min_size=1,
    max_size=8,
)


def _member(kind: str, name: str, link: str) -> Member:
    if kind == "file":
        return _file(name or "x")
    if kind == "dir":
        return _folder(name or "d")
    if kind == "symlink":
        return _symlink(name or "s", link or ".")
    return _hardlink(name or "h", link or "x")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MEMBERS)
def test_generated_archives_never_escape(members: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as temp:
        world = Path(temp)
        (world / "outside").mkdir()
        (world / "outside" / "keep.txt").write_bytes(b"mine")
        bundle = build(world / "gen.tgz", [_member(*m) for m in members])
        before = snapshot(world / "outside")
        destination = world / "root" / "staging"
        try:
            unpack(bundle, destination, limits=UnpackLimits())
        except InstallRefused:
            pass
        else:
            # Whatever was accepted resolves inside the tree.
            real_root = os.path.realpath(destination)
            for folder, dirs, files in os.walk(destination):
                for name in dirs + files:
                    resolved = os.path.realpath(os.path.join(folder, name))
                    assert resolved == real_root or resolved.startswith(real_root + os.sep)
        assert snapshot(world / "outside") == before
        assert sorted(p.name for p in world.iterdir()) == ["gen.tgz", "outside", "root"]
        assert [p.name for p in (world / "root").iterdir()] == ["staging"]
