"""safe_extract refuses every escape we know of and unpacks benign archives exactly.

Each malicious sample is built in a few lines with tarfile/zipfile (plus a byte
patch where the library will not write the bad thing itself). After a refusal the
test checks that nothing at all appeared outside ``dest`` and that ``dest`` is
gone. Benign archives are compared with the tree they were made from, via the
NAR hash (which covers names, contents, the executable bit and link targets).
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.archive import check_relpath, safe_extract
from reconcile.errors import IntegrityError, ReconcileError
from reconcile.narhash import nar_hash

# --- builders -------------------------------------------------------------------------


def make_tar(path: Path, members: list[dict], mode: str = "w:gz") -> Path:
    """A tar with members {name, type, link, data, mode, pax}; any name is allowed."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as t:
        for m in members:
            info = tarfile.TarInfo(m["name"])
            info.type = m.get("type", tarfile.REGTYPE)
            info.linkname = m.get("link", "")
            info.mode = m.get("mode", 0o644)
            info.pax_headers = m.get("pax", {})
            data = m.get("data", b"")
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return path


def make_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """A zip of (name, data, unix mode incl. file type) entries, made on "Unix"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is what we want here
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = mode << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    return path


def patch_zip(path: Path, old: bytes, new: bytes) -> Path:
    """Replace bytes in both the local and central headers (names zipfile won't write)."""
    data = path.read_bytes()
    assert data.count(old) >= 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    return path


def snapshot(root: Path) -> set[str]:
    """Every path under root, links not followed."""
    out = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


def assert_refused(tmp_path: Path, archive: Path, match: str = "refusing member") -> IntegrityError:
    """safe_extract raises IntegrityError and leaves no trace anywhere under tmp_path."""
    (tmp_path / "out").mkdir(exist_ok=True)
    dest = tmp_path / "out" / "dest"
    before = snapshot(tmp_path)
    with pytest.raises(IntegrityError, match=match) as e:
        safe_extract(archive, dest)
    assert not os.path.lexists(dest)
    assert snapshot(tmp_path) == before
    assert not os.path.lexists(tmp_path.parent / "outside")
    return e.value


REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

EVIL_TARS: dict[str, list[dict]] = {
    "absolute path": [{"name": "/etc/evil", "data": b"x"}],
    "dotdot": [{"name": "../evil", "data": b"x"}],
    "nested dotdot": [{"name": "a/../../evil", "data": b"x"}],
    "dot-slash dotdot": [{"name": "./../evil", "data": b"x"}],
    "backslash": [{"name": "a\\..\\..\\evil", "data": b"x"}],
    "drive letter": [{"name": "C:/evil", "data": b"x"}],
    "NUL in pax path": [{"name": "ok", "pax": {"path": "a\0/../../evil"}, "data": b"x"}],
    "symlink escape then write through it": [
        {"name": "link", "type": SYM, "link": "../../outside"},
        {"name": "link/evil", "data": b"x"},
    ],
    "absolute symlink": [{"name": "l", "type": SYM, "link": "/etc/passwd"}],
    "symlink chain climbing through a link": [
        {"name": "x", "type": SYM, "link": "."},
        {"name": "y", "type": SYM, "link": "x/.."},
    ],
    "write through an internal symlink": [
        {"name": "sub", "type": DIR},
        {"name": "d", "type": SYM, "link": "sub"},
        {"name": "d/evil", "data": b"x"},
    ],
    "hardlink escaping": [{"name": "h", "type": LNK, "link": "../../etc/passwd"}],
    "hardlink absolute": [{"name": "h", "type": LNK, "link": "/etc/passwd"}],
    "hardlink to a later or unknown member": [{"name": "h", "type": LNK, "link": "nothere"}],
    "char device": [{"name": "dev", "type": tarfile.CHRTYPE}],
    "block device": [{"name": "blk", "type": tarfile.BLKTYPE}],
    "fifo": [{"name": "fifo", "type": tarfile.FIFOTYPE}],
    "duplicate": [{"name": "a", "data": b"1"}, {"name": "a", "data": b"2"}],
    "case collision": [{"name": "README", "data": b"1"}, {"name": "readme", "data": b"2"}],
    "file then dir through it": [{"name": "a", "data": b"1"}, {"name": "a/b", "data": b"2"}],
    "bad member after good ones": [
        {"name": "good/one", "data": b"1" * 1000},
        {"name": "good/two", "data": b"2"},
        {"name": "../evil", "data": b"x"},
    ],
}


@pytest.mark.parametrize("case", sorted(EVIL_TARS))
def test_malicious_tar_is_refused_and_nothing_written(tmp_path: Path, case: str) -> None:
    archive = make_tar(tmp_path / "model.zip", EVIL_TARS[case])  # the name lies: sniffed
    err = assert_refused(tmp_path, archive)
    assert "model.zip" in str(err)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_tar_compression_is_checked(tmp_path: Path, mode: str) -> None:
    assert_refused(tmp_path, make_tar(tmp_path / "a", EVIL_TARS["dotdot"], mode))


def test_error_names_the_member_and_the_reason(tmp_path: Path) -> None:
    err = assert_refused(tmp_path, make_tar(tmp_path / "a.tgz", EVIL_TARS["char device"]))
    assert "'dev'" in str(err) and "character device" in str(err)
    err = assert_refused(tmp_path, make_tar(tmp_path / "b.tgz", EVIL_TARS["absolute symlink"]))
    assert "'l'" in str(err) and "/etc/passwd" in str(err)


EVIL_ZIPS: dict[str, list[tuple[str, bytes, int]]] = {
    "zip slip": [("../evil", b"x", 0o100644)],
    "nested zip slip": [("a/b/../../../evil", b"x", 0o100644)],
    "absolute": [("/abs/evil", b"x", 0o100644)],
    "drive letter": [("C:/win/evil", b"x", 0o100644)],
    "backslash": [("a\\..\\..\\evil", b"x", 0o100644)],
    "symlink escaping": [("l", b"../../outside", 0o120777)],
    "absolute symlink": [("l", b"/etc/passwd", 0o120777)],
    "symlink then write through it": [("l", b"../..", 0o120777), ("l/evil", b"x", 0o100644)],
    "internal symlink then write through it": [
        ("sub/", b"", 0o040755),
        ("l", b"sub", 0o120777),
        ("l/evil", b"x", 0o100644),
    ],
    "symlink chain": [("x", b".", 0o120777), ("y", b"x/..", 0o120777)],
    "device": [("dev", b"", 0o020644)],
    "fifo": [("fifo", b"", 0o010644)],
    "duplicate": [("a", b"1", 0o100644), ("a", b"2", 0o100644)],
}


@pytest.mark.parametrize("case", sorted(EVIL_ZIPS))
def test_malicious_zip_is_refused(tmp_path: Path, case: str) -> None:
    assert_refused(tmp_path, make_zip(tmp_path / "weights.tar", EVIL_ZIPS[case]))


def test_zip_nul_in_name(tmp_path: Path) -> None:
    """zipfile cuts .filename at a NUL; the check must look at the original name."""
    z = make_zip(tmp_path / "a.zip", [("aQ../../evil", b"x", 0o100644)])
    assert_refused(tmp_path, patch_zip(z, b"aQ../../evil", b"a\0../../evil"))


def test_zip_encrypted_entry(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "a.zip", [("a", b"x", 0o100644)])
    data = bytearray(z.read_bytes())
    cd = data.index(b"PK\x01\x02")
    data[cd + 8] |= 0x1  # general purpose flag bit 0: encrypted
    z.write_bytes(bytes(data))
    assert_refused(tmp_path, z, "encrypted")


def test_zip_overlapping_entries(tmp_path: Path) -> None:
    """Two directory records sharing one compressed stream (the overlap bomb)."""
    z = make_zip(tmp_path / "a.zip", [("a", b"x" * 1000, 0o100644), ("b", b"y" * 1000, 0o100644)])
    data = bytearray(z.read_bytes())
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    data[second + 42 : second + 46] = (0).to_bytes(4, "little")  # b's local header := a's
    z.write_bytes(bytes(data))
    assert_refused(tmp_path, z, "overlaps")


def test_zip_local_name_differs_from_directory(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "a.zip", [("good", b"x", 0o100644)])
    data = z.read_bytes()
    lh = data.index(b"good")  # first occurrence: the local header
    z.write_bytes(data[:lh] + b"evil" + data[lh + 4 :])
    assert_refused(tmp_path, z, "corrupt")


def test_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "a.zip", [("zeros", b"\0" * 5_000_000, 0o100644)])
    assert z.stat().st_size < 50_000
    with pytest.raises(IntegrityError, match="size cap"):
        safe_extract(z, tmp_path / "d", max_total=1_000_000)
    t = make_tar(tmp_path / "a.tgz", [{"name": "zeros", "data": b"\0" * 5_000_000}])
    with pytest.raises(IntegrityError, match="size cap"):
        safe_extract(t, tmp_path / "d", max_total=1_000_000)
    with pytest.raises(IntegrityError, match="too many members"):
        safe_extract(
            make_tar(tmp_path / "m.tgz", [{"name": f"f{i}"} for i in range(20)]),
            tmp_path / "d",
            max_members=10,
        )
    assert not (tmp_path / "d").exists()


def test_not_an_archive_or_truncated(tmp_path: Path) -> None:
    p = tmp_path / "x.tar.gz"
    p.write_bytes(b"just bytes, whatever the name says")
    with pytest.raises(IntegrityError, match="not a tar or zip"):
        safe_extract(p, tmp_path / "d")
    good = make_tar(tmp_path / "g.tgz", [{"name": "a", "data": os.urandom(100_000)}])
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(good.read_bytes()[:-5000])
    with pytest.raises(IntegrityError, match="corrupt"):
        safe_extract(cut, tmp_path / "d")
    zst = tmp_path / "z"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    with pytest.raises(IntegrityError, match=r"zstd|corrupt"):
        safe_extract(zst, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_tar_zstd_is_unpacked_by_the_same_rules(tmp_path: Path) -> None:
    """tar+zstd (OCI model layers): members checked exactly as in a plain tar."""
    zstandard = pytest.importorskip("zstandard")
    data = os.urandom(50_000)
    plain = make_tar(tmp_path / "ok.tar", [{"name": "w/model.bin", "data": data}])
    ok = tmp_path / "ok.tar.zst"
    ok.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    safe_extract(ok, tmp_path / "d")
    assert (tmp_path / "d/w/model.bin").read_bytes() == data
    evil = make_tar(tmp_path / "evil.tar", [{"name": "../escape", "data": b"x"}])
    bad = tmp_path / "evil.tar.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(evil.read_bytes()))
    with pytest.raises(IntegrityError, match="escape"):
        safe_extract(bad, tmp_path / "e")
    assert not (tmp_path / "e").exists() and not (tmp_path / "escape").exists()


def test_dest_must_be_new_or_empty(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tgz", [{"name": "f", "data": b"1"}])
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    with pytest.raises(ReconcileError, match="must be empty"):
        safe_extract(archive, full)
    assert snapshot(full) == {"keep"}
    empty = tmp_path / "empty"
    empty.mkdir()
    safe_extract(archive, empty)
    assert (empty / "f").read_bytes() == b"1"
    # a failure into a pre-existing empty dest leaves it empty (and in place)
    empty2 = tmp_path / "empty2"
    empty2.mkdir()
    with pytest.raises(IntegrityError):
        safe_extract(make_tar(tmp_path / "e.tgz", EVIL_TARS["bad member after good ones"]), empty2)
    assert empty2.is_dir() and not any(empty2.iterdir())


# --- benign archives --------------------------------------------------------------


def benign_tree(root: Path) -> Path:
    (root / "dir" / "nested" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "dir" / "a.txt").write_bytes(b"a")
    (root / "dir" / "nested" / "deeper" / "w.bin").write_bytes(os.urandom(3000))
    (root / "empty-file").write_bytes(b"")
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "caf\u00e9 \u2713.json").write_bytes(b"{}")
    os.symlink("../run.sh", root / "dir" / "link")
    os.symlink("dir/nested", root / "latest")
    os.symlink("../../a.txt", root / "dir" / "nested" / "up")
    os.symlink("missing", root / "dangling")
    return root


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_benign_tar_round_trips_exactly(tmp_path: Path, mode: str) -> None:
    src = benign_tree(tmp_path / "src")
    archive = tmp_path / "archive.bin"
    with tarfile.open(archive, mode) as t:
        t.add(src, arcname=".")  # members "./dir", ...: the common `tar -C src .` layout
    dest = tmp_path / "dest"
    safe_extract(archive, dest)
    assert nar_hash(dest) == nar_hash(src)
    assert os.readlink(dest / "dir" / "link") == "../run.sh"
    assert (dest / "latest" / "deeper" / "w.bin").read_bytes() == (
        src / "dir" / "nested" / "deeper" / "w.bin"
    ).read_bytes()
    assert os.stat(dest / "run.sh").st_mode & stat.S_IXUSR
    assert not os.stat(dest / "dir" / "a.txt").st_mode & 0o111


def test_benign_tar_hardlink_and_modes(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tgz",
        [
            {"name": "dir/", "type": DIR, "mode": 0o700},
            {"name": "dir/a", "data": b"same", "mode": 0o4755},  # setuid is dropped
            {"name": "b", "type": LNK, "link": "dir/a"},
            {"name": "w", "data": b"w", "mode": 0o666},
        ],
    )
    dest = tmp_path / "d"
    safe_extract(archive, dest)
    assert os.stat(dest / "b").st_ino == os.stat(dest / "dir" / "a").st_ino
    assert stat.S_IMODE(os.stat(dest / "dir" / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "w").st_mode) == 0o644


def test_benign_zip(tmp_path: Path) -> None:
    z = make_zip(
        tmp_path / "a.zip",
        [
            ("dir/", b"", 0o040755),
            ("dir/nested/a.txt", b"a", 0o100644),
            ("run.sh", b"#!/bin/sh\n", 0o100755),
            ("dir/link", b"../run.sh", 0o120777),
            ("latest", b"dir/nested", 0o120777),
            ("empty/", b"", 0o040755),
            ("caf\u00e9.json", b"{}", 0o100644),
        ],
    )
    dest = tmp_path / "d"
    safe_extract(z, dest)
    assert (dest / "dir" / "nested" / "a.txt").read_bytes() == b"a"
    assert os.readlink(dest / "dir" / "link") == "../run.sh"
    assert (dest / "latest" / "a.txt").read_bytes() == b"a"
    assert os.stat(dest / "run.sh").st_mode & stat.S_IXUSR
    assert (dest / "empty").is_dir() and (dest / "caf\u00e9.json").read_bytes() == b"{}"


def test_zip_from_another_os_ignores_mode_bits(tmp_path: Path) -> None:
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as z:
        info = zipfile.ZipInfo("a/b.txt")
        info.create_system = 0  # MS-DOS: high bits of external_attr mean nothing
        info.external_attr = 0o120777 << 16
        z.writestr(info, b"text")
    safe_extract(p, tmp_path / "d")
    assert (tmp_path / "d" / "a" / "b.txt").read_bytes() == b"text"


# --- properties -----------------------------------------------------------------------

_ATOMS = ["a", "b", "sub", ".", "..", "", "C:", "\\", "..\\..", "\0", "\n", "\u00e9", "~", " "]
paths = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(_ATOMS), max_size=6).map("/".join),
    st.lists(st.sampled_from(_ATOMS), max_size=6).map(lambda p: "/" + "/".join(p)),
)


@settings(max_examples=300)
@given(paths)
def test_check_relpath_never_returns_an_escaping_path(s: str) -> None:
    try:
        clean = check_relpath(s)
    except ValueError as e:
        assert str(e)  # always says why
        return
    parts = clean.split("/")
    assert all(p not in ("", ".", "..") for p in parts)
    assert "\0" not in clean and "\\" not in clean and not clean.startswith("/")
    assert check_relpath(clean) == clean  # normal form is stable
    base = "/base/dir"
    joined = os.path.normpath(os.path.join(base, clean))
    assert joined.startswith(base + "/")
    assert posixpath.commonpath([base, joined]) == base


@pytest.mark.parametrize(
    "bad",
    ["", "/", "/etc/passwd", "..", "../x", "a/../b", "a/./b", ".", "./a", "a\\b", "C:x", "c:/x",
     "a\0b", "a\nb", "x" * 256, "a/" + "\udc80" * 300,
     ".git/config", "a/.GIT/HEAD", "x/.git", ".Git./hooks/post-checkout", "m/.git /config",
     ".hg/hgrc", "GIT~1/config"],
)  # fmt: skip
def test_check_relpath_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        check_relpath(bad)


@pytest.mark.parametrize(
    ("good", "norm"), [("a", "a"), ("a//b/", "a/b"), ("d/\u00e9 x.bin", "d/\u00e9 x.bin"), ("a..b/.c", "a..b/.c")]
)  # fmt: skip
def test_check_relpath_accepts_and_normalises(good: str, norm: str) -> None:
    assert check_relpath(good) == norm


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["a", "sub", ".gitattributes", "git", "x.git"]), max_size=3),
       st.sampled_from([".git", ".GIT", ".Git", ".git.", ".git ", ".hg", ".HG"]),
       st.lists(st.sampled_from(["HEAD", "config", "objects", "hooks"]), max_size=3))
def test_no_accepted_path_holds_a_repository_directory(before, repo_dir, after) -> None:
    """Whatever surrounds it, a path through .git (any case, any depth) or .hg is refused,
    by name: a model tree holding one is a repository a prompt's `git status` runs."""
    path = "/".join([*before, repo_dir, *after])
    with pytest.raises(ValueError, match="component is not allowed"):
        check_relpath(path)
    neighbours = "/".join([*before, repo_dir.strip(". ") + "x", *after]) or "x"
    check_relpath(neighbours)  # .gitx, gitattributes… are ordinary names


_LINK_NAMES = ["a", "b", "c", "s/a", "s/b", "s/t/a"]
_TARGET_TOKENS = ["a", "b", "c", "s", "t", ".", ".."]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_LINK_NAMES),
            st.lists(st.sampled_from(_TARGET_TOKENS), min_size=1, max_size=4).map("/".join),
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda lt: lt[0],
    )
)
def test_no_accepted_symlink_resolves_outside_dest(links: list[tuple[str, str]]) -> None:
    """Whatever chain of links an archive holds, each accepted one resolves inside dest."""
    members = [{"name": "s", "type": DIR}, {"name": "s/t", "type": DIR}]
    members += [{"name": n, "type": SYM, "link": t} for n, t in links]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        archive = make_tar(tmp_path / "a.tar", members, "w")
        dest = tmp_path / "out" / "dest"
        dest.parent.mkdir()
        try:
            safe_extract(archive, dest)
        except IntegrityError:
            assert not dest.exists()
            return
        root = os.path.realpath(dest)
        for name, _ in links:
            resolved = os.path.realpath(dest / name)
            assert resolved == root or resolved.startswith(root + os.sep), (name, links)
