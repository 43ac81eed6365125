"""Malicious archives are refused before anything is written; benign ones unpack exactly."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.archive import safe_extract
from reconcile.errors import IntegrityError
from reconcile.paths import check_relpath


def tar(tmp: Path, members) -> Path:
    p = tmp / "a.tar.gz"
    with tarfile.open(p, "w:gz") as t:
        for m in members:
            info = tarfile.TarInfo(m["name"])
            info.type = m.get("type", tarfile.REGTYPE)
            info.linkname = m.get("link", "")
            data = m.get("data", b"")
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            info.mode = m.get("mode", 0o644)
            t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return p


def zipf(tmp: Path, entries) -> Path:
    p = tmp / "a.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return p


EVIL_TARS = {
    "absolute": [{"name": "/etc/evil", "data": b"x"}],
    "dotdot": [{"name": "../evil", "data": b"x"}],
    "nested dotdot": [{"name": "a/../../evil", "data": b"x"}],
    "symlink escape then write through it": [
        {"name": "link", "type": tarfile.SYMTYPE, "link": "../../outside"},
        {"name": "link/evil", "data": b"x"}],
    "absolute symlink": [{"name": "l", "type": tarfile.SYMTYPE, "link": "/etc/passwd"}],
    "hardlink": [{"name": "h", "type": tarfile.LNKTYPE, "link": "../../etc/passwd"}],
    "char device": [{"name": "dev", "type": tarfile.CHRTYPE}],
    "fifo": [{"name": "fifo", "type": tarfile.FIFOTYPE}],
    "duplicate": [{"name": "a", "data": b"1"}, {"name": "a", "data": b"2"}],
    "backslash": [{"name": "a\\..\\..\\evil", "data": b"x"}],
}


@pytest.mark.parametrize("case", sorted(EVIL_TARS))
def test_malicious_tar_is_refused_and_nothing_written(tmp_path, case):
    archive = tar(tmp_path, EVIL_TARS[case])
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    with pytest.raises(IntegrityError) as e:
        safe_extract(archive, dest)
    assert "refusing member" in str(e.value)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["a.tar.gz", "out"])


@pytest.mark.parametrize("entries", [
    [("../evil", b"x", 0o100644)],
    [("/abs/evil", b"x", 0o100644)],
    [("C:/win/evil", b"x", 0o100644)],
    [("l", b"../../outside", 0o120777)],
    [("l", b"/etc/passwd", 0o120777)],
    [("dev", b"", 0o020644)],
])
def test_malicious_zip_is_refused(tmp_path, entries):
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError):
        safe_extract(zipf(tmp_path, entries), dest)
    assert not dest.exists()


def test_bomb_stops_at_the_cap(tmp_path):
    archive = zipf(tmp_path, [("zeros", b"\0" * 5_000_000, 0o100644)])
    assert archive.stat().st_size < 50_000
    with pytest.raises(IntegrityError, match="size cap"):
        safe_extract(archive, tmp_path / "d", max_total=1_000_000)
    assert not (tmp_path / "d").exists()


def test_benign_tar_keeps_dirs_internal_links_and_exec_bits(tmp_path):
    archive = tar(tmp_path, [
        {"name": "dir", "type": tarfile.DIRTYPE, "mode": 0o755},
        {"name": "dir/a.txt", "data": b"a"},
        {"name": "run.sh", "data": b"#!/bin/sh\n", "mode": 0o755},
        {"name": "dir/link", "type": tarfile.SYMTYPE, "link": "../run.sh"},
        {"name": "empty", "type": tarfile.DIRTYPE},
    ])
    dest = tmp_path / "d"
    safe_extract(archive, dest)
    assert (dest / "dir" / "a.txt").read_bytes() == b"a"
    assert os.readlink(dest / "dir" / "link") == "../run.sh"
    assert os.stat(dest / "run.sh").st_mode & 0o111
    assert (dest / "empty").is_dir()


def test_non_archive_is_a_clear_error(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"just bytes")
    with pytest.raises(IntegrityError, match="not a tar or zip"):
        safe_extract(p, tmp_path / "d", label="x.bin")


@given(st.text(max_size=40))
def test_check_relpath_never_returns_an_escaping_path(s):
    try:
        clean = check_relpath(s)
    except ValueError:
        return
    base = Path("/base")
    joined = os.path.normpath(base / clean)
    assert joined.startswith("/base/") and "\0" not in clean and not clean.startswith("/")
