"""Files and trees: each file scanned by what its bytes are, containers recursively."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..magic import NPY_MAGIC, compressed_kind, zip_like
from .archives import _scan_compressed, _scan_tar
from .findings import Finding, _note
from .npy import scan_npy
from .stream import scan_stream
from .zips import _Opener, _scan_zip


def _scan_blob(
    open_: _Opener,
    size: int | None,
    rel: str,
    member: str,
    depth: int,
    stream_done: Callable[[Any], list[Finding]] | None = None,
) -> list[Finding]:
    """One member (zip or tar): .npy, nested zip, or pickle, decided from its bytes."""
    head = open_().read(8)
    if head.startswith(NPY_MAGIC):
        return scan_npy(open_(), rel, member, size)
    if head.startswith(b"PK\x03\x04"):
        if depth >= 3:
            return [_note(rel, member, 0, "zip nested too deeply to scan")]
        with tempfile.NamedTemporaryFile(prefix="reconcile-scan-") as tmp:
            src = open_()
            while chunk := src.read(1 << 20):
                tmp.write(chunk)
            tmp.flush()
            return _scan_path(Path(tmp.name), rel, member, depth + 1)
    s = open_()
    found = scan_stream(s, rel, member)
    if found and stream_done is not None:
        found += stream_done(s)
    return found



# --- files and trees --------------------------------------------------------------------


def _scan_path(path: Path, rel: str, prefix: str | None, depth: int) -> list[Finding]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        if head.startswith(NPY_MAGIC):
            f.seek(0)
            return scan_npy(f, rel, prefix, size)
        findings: list[Finding] = []
        if not head.startswith(b"PK"):
            # every file is walked from byte 0: torch.load unpickles anything that does
            # not start with a zip local header (a pickle glued before a zip included)
            f.seek(0)
            findings += scan_stream(f, rel, prefix, end=size)
        is_zip = zip_like(f, size, head)
    if is_zip:
        findings += _scan_zip(path, rel, prefix, depth, _scan_blob)
    elif len(head) > 262 and head[257:262] == b"ustar":
        findings += _scan_tar(path, rel, prefix, depth, _scan_blob)
    elif (kind := compressed_kind(head)) is not None and not findings:
        findings += _scan_compressed(path, rel, prefix, kind)
    return findings


def scan_file(path: Path, rel: str | None = None) -> list[Finding]:
    """Scan one file by what its bytes are (never by its name)."""
    rel = rel if rel is not None else path.name
    try:
        return _scan_path(Path(path), rel, None, 0)
    except OSError as e:
        return [_note(rel, None, 0, f"cannot read ({e})")]
    except Exception as e:  # a scanner bug must block the file, not crash the validator
        return [_note(rel, None, 0, f"scanner failed ({type(e).__name__}: {e}): not scanned")]


def _regular_files(root: Path) -> Iterator[tuple[Path, str]]:
    for dirpath, dirs, files in os.walk(root):  # does not descend into symlinked dirs
        dirs.sort()
        for name in sorted(files):
            p = Path(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue  # symlinks, FIFOs (opening one blocks), devices
            except OSError:
                continue
            yield p, p.relative_to(root).as_posix()


def scan_tree(root: Path) -> list[Finding]:
    """Every regular file under root (symlinks are not followed)."""
    out: list[Finding] = []
    for p, rel in _regular_files(Path(root)):
        out += scan_file(p, rel)
    return out


